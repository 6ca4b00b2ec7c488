"""Weekly retraining, off until someone turns it on in the UI or with `dagster schedule start`."""

import dagster as dg

from medcot_pipeline.defs.jobs import retraining_job

weekly_retraining = dg.ScheduleDefinition(
    name="weekly_retraining",
    job=retraining_job,
    cron_schedule="0 3 * * 1",  # Mondays 03:00, when GPUs are usually idle
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
)
