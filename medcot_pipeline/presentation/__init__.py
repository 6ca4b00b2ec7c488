"""How medcot's facts read to a person: plain functions that build markdown, tables and charts from contracts.

Nothing here imports Dagster. The asset pages (defs/metadata.py wraps these in `dg.MetadataValue`s), the
training process (Pipes metadata), the model card and the `medcot` command all call the same functions, so a
number is rounded, an answer flagged and a gate's decision worded the same way wherever it appears.
"""
