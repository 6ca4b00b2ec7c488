"""medcot: a Dagster pipeline that fine-tunes a chat model to answer medical questions with <think>/<response> tags."""

__version__ = "0.1.0"
