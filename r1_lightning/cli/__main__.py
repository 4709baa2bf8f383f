"""``python -m r1_lightning.cli`` runs the ``r1-lightning`` console script (tests and multi-node launchers use it)."""

import sys

from r1_lightning.cli.main import console_main

sys.exit(console_main())
