"""Running a job: the pipeline on Ray Data, row validation, source photos, the run's recorder and result, run identity, placement checks, the report, refresh and the cost forecast.

Never imports ``factory.cli``, ``deploy`` or ``lora``.
"""
