"""Running elsewhere: the Ray Jobs client, KubeRay exports and the cron scheduler.

Never imports ``factory.run`` or ``factory.cli``.
"""
