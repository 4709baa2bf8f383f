"""Lightning callbacks of r1-lightning: rollout generation, reward logging, stage schedules.

This folder is installed as ``r1_lightning.callbacks``.
"""

from r1_lightning.callbacks.completion_log import CompletionLogCallback
from r1_lightning.callbacks.reward_logging import RewardLoggingCallback
from r1_lightning.callbacks.rollout_callback import RolloutCallback
from r1_lightning.callbacks.run_report import RunReportCallback
from r1_lightning.callbacks.stage_schedule import StageScheduleCallback
from r1_lightning.callbacks.step_progress import StepProgressCallback

__all__ = [
    "CompletionLogCallback",
    "RewardLoggingCallback",
    "RolloutCallback",
    "RunReportCallback",
    "StageScheduleCallback",
    "StepProgressCallback",
]
