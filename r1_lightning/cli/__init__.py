"""Entry points: the ``r1-lightning`` console script (``main.py``). Kept light: ``--help`` imports no torch."""
