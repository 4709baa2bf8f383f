"""reasoning-gym (the ``reasoning-gym`` package: procedural tasks with their own verifiers, offline) as a
prompt source, and its verifier as the reward.

``ReasoningGymTask(task="basic_arithmetic", config={...})`` draws the task's questions;
``reasoning_gym_reward`` scores a completion's final answer (``<answer>`` tag, else ``\\boxed{}``, else
the last line) with the task's own ``score_answer`` (1.0 exact, partial credit where the task gives it).
Validation questions come from a different seed and are held out of training by their text, as the
project's other tasks are. Install with ``pip install -e '.[reasoning-gym]'``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from r1_lightning.data.sources import PromptSource
from r1_lightning.rewards._text import completion_text, extract_answer

#: the record column carrying reasoning-gym's own entry (question, answer, metadata) to the reward
ENTRY_COLUMN = "reasoning_gym_entry"


def _reasoning_gym() -> Any:
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
        rg = _reasoning_gym()
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


def final_answer(text: str) -> str:
    """The completion's final answer: ``<answer>`` tag, else ``\\boxed{}``, else its last line.

    >>> final_answer("<think>5+3</think> <answer> 8 </answer>"), final_answer("so\\n8")
    ('8', '8')
    """
    answer = extract_answer(text)
    if answer is not None:
        return answer
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def reasoning_gym_reward(
    completions: list, reasoning_gym_entry: list[dict] | None = None, **kwargs: Any
) -> list[float | None]:
    """reasoning-gym's own verifier (``score_answer`` of the entry's task) on each completion's final
    answer; ``None`` for records that are not from reasoning-gym."""
    if reasoning_gym_entry is None:
        return [None] * len(completions)
    rg = _reasoning_gym()
    scores: list[float | None] = []
    for completion, entry in zip(completions, reasoning_gym_entry, strict=True):
        if not entry:
            scores.append(None)
            continue
        score = rg.get_score_answer_fn(entry["metadata"]["source_dataset"])
        scores.append(float(score(final_answer(completion_text(completion)), entry)))
    return scores
