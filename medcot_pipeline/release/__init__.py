"""Stage 5: the model card and the release folder, pushed to the Hub."""
