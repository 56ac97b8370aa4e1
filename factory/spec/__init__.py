"""The job spec and its sections, parsed once into frozen objects: the job, seasons, templating, routes, cron, content-derived keys, channels, the QA gate, prices, publishing.

Never imports ``factory.run``, ``sink``, ``cost``, ``lora``, ``deploy`` or ``cli``.
"""
