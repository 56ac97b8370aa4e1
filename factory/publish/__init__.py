"""Publishing a committed run back to its catalog's own formats: a Shopify product CSV, Merchant Center supplemental feeds (TSV, XML) and a Parquet dataset of the run's assets, with their URLs and alt text.

Imports ``factory.core``, ``factory.store``, ``factory.spec``, ``factory.catalog`` and ``factory.sink``; never ``factory.run``, ``cli``, ``deploy`` or ``lora``.
"""
