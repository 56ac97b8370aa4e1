"""Distributed batch asset factory: SKU catalogs through a chain of image models on Ray Data."""

__version__ = "0.1.0"
