"""Everything Dagster: assets, checks, resources, jobs, schedules and sensors. The rest of the package imports no Dagster."""
