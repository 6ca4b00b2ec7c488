"""Stage 4: answer questions with a model and grade the answers."""
