"""Storage: the output store (local directory or S3, create-only writes), S3 options and clients, fetching photos by reference, and the readers of a run's tables.

Imports ``factory.core`` only.
"""
