"""Stage adapters: one module per stage and model family, each a card plus a callable class."""
