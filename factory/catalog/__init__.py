"""Catalogs: manifests (CSV, Parquet, JSONL) and commerce exports (Shopify, Merchant Center) streamed as numbered records, and the demo catalogs.

Imports ``factory.core``, ``factory.store`` and ``stages`` (tiny models for the demo).
"""
