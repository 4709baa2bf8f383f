"""Scoring models the R1 way: held-out evaluation inside GRPO (``grpo_validation.py``), a model folder on a
prompt set (``evaluator.py``) or a benchmark file (``benchmark.py``), R1's behaviours and alarms
(``behaviour.py``), and the pipeline report (``report.py``)."""
