"""reasoning-gym (the ``reasoning-gym`` package: procedural tasks with their own verifiers, offline) as a
prompt source, and its verifier as the reward.

``ReasoningGymTask(task="basic_arithmetic", config={...})`` draws the task's questions;
``r1_lightning.rewards.reasoning_gym.reasoning_gym_reward`` scores a completion's final answer
(``<answer>`` tag, else ``\\boxed{}``, else the last line) with the task's own ``score_answer`` (1.0
exact, partial credit where the task gives it).
Validation questions come from a different seed and are held out of training by their text, as the
project's other tasks are. Install with ``pip install -e '.[reasoning-gym]'``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from r1_lightning.data.sources import PromptSource

#: the record column carrying reasoning-gym's own entry (question, answer, metadata) to the reward
ENTRY_COLUMN = "reasoning_gym_entry"


def import_reasoning_gym() -> Any:
    try:
        import reasoning_gym
    except ImportError as err:  # optional dependency
        raise ImportError(
            "reasoning-gym tasks need the reasoning-gym package: pip install -e '.[reasoning-gym]'"
        ) from err
    return reasoning_gym


class ReasoningGymTask(PromptSource):
    """Any reasoning-gym task by name, e.g. ``basic_arithmetic``, ``chain_sum``, ``countdown``,
    ``leg_counting``, with its configuration (the task's dataclass fields).

    Args:
        task: the reasoning-gym dataset name.
        config: the task's settings (e.g. ``{min_digits: 1, max_digits: 2}``).
        size: training questions per pass (reshuffled each pass).
        val_size: held-out validation questions.
    """

    def __init__(
        self,
        task: str = "basic_arithmetic",
        config: dict[str, Any] | None = None,
        size: int = 10_000,
        val_size: int = 64,
    ) -> None:
        self.task, self.config, self.size, self.val_size = task, dict(config or {}), size, val_size
        self._val: list[dict] | None = None

    def _dataset(self, size: int, seed: int) -> Any:
        rg = import_reasoning_gym()
        try:
            return rg.create_dataset(self.task, size=size, seed=seed, **self.config)
        except (ValueError, TypeError, KeyError) as err:
            raise ValueError(f"reasoning-gym task {self.task!r} with config {self.config}: {err}") from err

    @staticmethod
    def to_record(entry: dict) -> dict:
        return {"prompt": entry["question"], "answer": str(entry["answer"]), ENTRY_COLUMN: entry}

    def val_records(self, seed: int) -> list[dict]:
        if self._val is None:
            # A seed of its own: validation questions are drawn apart from the training stream.
            self._val = [self.to_record(e) for e in self._dataset(self.val_size, seed + 1_000_003)]
        return self._val

    def iter_train(self, seed: int, epoch: int) -> Iterator[dict]:
        held_out = {r["prompt"] for r in self.val_records(seed)}
        for entry in self._dataset(self.size, seed * 7919 + epoch):
            if entry["question"] not in held_out:
                yield self.to_record(entry)
