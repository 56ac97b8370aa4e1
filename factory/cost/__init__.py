"""Cost control: calibration of a job's per-stage costs from its committed runs, and the budget cap that defers rows.

Never imports ``factory.run``, ``lora``, ``deploy`` or ``cli``.
"""
