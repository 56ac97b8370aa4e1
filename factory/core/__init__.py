"""The core: settings (the one reader of environment variables), metrics, images between stages, console output, row status names, photo decoding and the generated-image metadata.

Imports nothing of the project.
"""
