"""Webhook notifications when a run ends: the events' bodies (``body``), their signatures
(``signing``, with ``verify`` for receivers) and their delivery (``delivery``).

A leaf package: it imports ``factory.core``, ``factory.store`` (the photo fetcher's URL check
and retry policy) and ``factory.spec`` (``NotifyConfig``) only, never ``factory.run``,
``factory.cli``, ``factory.deploy``, ``factory.lora`` or ``factory.publish``. What a run's
result says reaches it as plain ``RunFacts``; ``factory.run.notified`` turns a run's end into
events and sends them.
"""
