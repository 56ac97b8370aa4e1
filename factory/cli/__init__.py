"""The ``factory`` command: one module per command group; ``main`` holds the group.

Imported by nothing but itself.
"""
