"""Test support code: a real local S3-compatible server and a fault-injecting proxy.

Everything here binds to the loopback interface (127.0.0.1) only.
"""
