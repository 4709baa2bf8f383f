"""Lightning callbacks of r1-lightning: rollout generation and reward logging.

This folder is installed as ``r1_lightning.callbacks``.
"""

from r1_lightning.callbacks.reward_logging import RewardLoggingCallback
from r1_lightning.callbacks.rollout import RolloutCallback

__all__ = ["RewardLoggingCallback", "RolloutCallback"]
