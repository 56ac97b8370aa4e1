"""The end of the chain: encoding and writing assets create-only, one per channel with the generated-image metadata.

Never imports ``factory.run``, ``lora``, ``deploy`` or ``cli``.
"""
