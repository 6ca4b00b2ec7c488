"""LoRA fine-tuning with TRL, run as its own process through Dagster Pipes (entry point: `run.py`)."""
