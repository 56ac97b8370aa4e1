"""The ``factory`` command: one module per command group; ``main`` holds the group and
registers every command; ``exits`` holds the exit codes.

Imported by nothing but itself.
"""
