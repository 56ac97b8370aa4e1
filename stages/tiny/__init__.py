"""Tiny random-weight models of the real architectures, built offline and loaded through the same ``from_pretrained`` / ``new_session`` calls as real weights: for tests and the demo.

Imports ``factory.core`` and ``factory.store`` only, like the rest of ``stages``.
"""
