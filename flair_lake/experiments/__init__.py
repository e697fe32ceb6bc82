"""Experiments: tables of variants x seeds (``flair-lake experiment``; docs/experiments.md).

:mod:`~flair_lake.experiments.plan` (variants, the paper's built-in tables, YAML plans) and
:mod:`~flair_lake.experiments.report` (mean ± std tables, per-class table, spread plot). ``pipelines/experiment.py``
builds the views and runs the trainings, in this process or on a Dask cluster's GPUs.
"""
