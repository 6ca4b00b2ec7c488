"""Stage 1: load raw records, clean them, format targets, split, measure in tokens."""
