"""StageScheduleCallback: in-run stage changes of R1's RL stages, on a step schedule.

R1 (Nature version, "Training details") adds the general (reward-model) rewards in its last RL stage only
for the final 400 steps, "as more general-data training steps increase reward hacking". The change is
logged when it happens (a line in the log, a ``stage/<event>`` metric set to 1 at that step, and
``self.events``). R1's other schedule, resetting the reference every 400 steps, is the module's own
``ref_model_sync_steps`` (:mod:`r1_lightning.training.reference`): it runs after every optimizer step,
which a once-per-batch callback cannot see when ``num_iterations`` > 1.

The callback keeps no state of its own: on resume it re-derives from ``trainer.global_step`` whether the
late rewards are already active.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from r1_lightning.rewards.registry import build_rewards


class StageScheduleCallback(L.Callback):
    """Late-added rewards on a schedule (for ``GRPOModule``).

    Args:
        late_rewards: rewards (same syntax as ``model.rewards``) added for the last ``late_reward_steps``
            steps of the run; needs ``trainer.max_steps``.
        late_reward_steps: how many final steps use ``late_rewards``.
    """

    def __init__(
        self,
        late_rewards: dict[str, float | dict[str, Any]] | None = None,
        late_reward_steps: int = 0,
    ) -> None:
        if late_rewards and late_reward_steps < 1:
            raise ValueError("`late_rewards` needs `late_reward_steps` >= 1 (how many final steps use them)")
        self.late_rewards, self.late_reward_steps = late_rewards or {}, late_reward_steps
        self.events: list[tuple[int, str]] = []

    def _record(self, trainer: L.Trainer, step: int, event: str, text: str) -> None:
        self.events.append((step, event))
        rank_zero_info(f"stage schedule, step {step}: {text}")
        for logger in trainer.loggers:
            logger.log_metrics({f"stage/{event}": 1.0}, step=step)

    def late_start(self, trainer: L.Trainer) -> int:
        """The first step (0-based ``global_step``) at which the late rewards are active."""
        if not trainer.max_steps or trainer.max_steps < 0:
            raise ValueError("StageScheduleCallback `late_rewards` needs `trainer.max_steps` (the run's length)")
        return max(trainer.max_steps - self.late_reward_steps, 0)

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if not self.late_rewards or trainer.global_step < self.late_start(trainer):
            return
        active = {reward.name for reward in pl_module.rewards}
        missing = {name: spec for name, spec in self.late_rewards.items() if name.rsplit(".", 1)[-1] not in active}
        if missing:
            pl_module.rewards = [*pl_module.rewards, *build_rewards(missing)]
            self._record(
                trainer,
                trainer.global_step,
                "late_rewards_added",
                f"added rewards {sorted(missing)} for the last {trainer.max_steps - trainer.global_step} steps",
            )
