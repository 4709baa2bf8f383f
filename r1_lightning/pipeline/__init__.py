"""R1's multi-stage recipe in one run (``runner.py``) and rejection sampling between stages (``rejection.py``)."""
