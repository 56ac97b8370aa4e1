"""Brand LoRA training on Ray Train: the training spec, data, the training loop and the content-addressed adapter.

Never imports ``factory.cli``.
"""
