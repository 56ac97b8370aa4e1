"""Running a job: the pipeline on Ray Data, row validation, source photos, the run's recorder and result, run identity, placement checks, the report, refresh and the cost forecast.

Publishes a committed run through ``factory.publish`` when its job asks for it, and announces a run's end to its webhooks through ``factory.notify`` (``notified``). Never imports ``factory.cli``, ``deploy`` or ``lora``.
"""
