"""R1's behaviours as numbers, and alarms for the ways RL goes wrong.

DeepSeek-R1 tracks, over RL, how long responses get and how often reflective words appear ("wait",
"mistake", "however", ...: the "aha moment"). ``reflective_word_counts`` counts them per completion.
``HackingAlarms`` watches the logged window means for reward hacking and collapse: format reward
rising while accuracy falls, response length collapsing or exploding against its start, and
truncation dominating; each alarm warns once when it starts (again only after it has cleared).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

#: the reflective words DeepSeek-R1 counts (Nature paper, Fig. on reasoning behaviour)
REFLECTIVE_WORDS = ("wait", "mistake", "however", "but", "retry", "error", "verify", "wrong", "evaluate", "check")


def reflective_word_counts(texts: list[str], words: tuple[str, ...] | list[str] = REFLECTIVE_WORDS) -> list[int]:
    """Occurrences of ``words`` (whole words, any case) in each text.

    >>> reflective_word_counts(["Wait, let me check: 2+2=4. But wait!", "4"])
    [4, 0]
    """
    if not words:
        return [0] * len(texts)
    pattern = re.compile(r"\b(?:" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)
    return [len(pattern.findall(text)) for text in texts]


@dataclass
class HackingAlarms:
    """Warnings from the training curves (window means, one update per logging step).

    Args:
        window: logging steps compared (the last ``window`` against the ``window`` before them).
        min_change: how much format must rise and accuracy fall (absolute) to call it hacking.
        collapse_ratio / explode_ratio: response length below / above this multiple of its first value.
        truncation_threshold: share of completions cut at ``max_new_tokens`` that counts as dominating.
        accuracy_key / format_key: the metrics read for the hacking alarm.
    """

    window: int = 3
    min_change: float = 0.05
    collapse_ratio: float = 0.25
    explode_ratio: float = 4.0
    truncation_threshold: float = 0.5
    accuracy_key: str = "train/reward/accuracy_reward"
    format_key: str = "train/reward/format_reward"
    history: list[dict[str, float]] = field(default_factory=list)
    first_length: float | None = None
    active: set[str] = field(default_factory=set)

    def _conditions(self) -> dict[str, str]:
        found: dict[str, str] = {}
        latest = self.history[-1]
        recent, before = self.history[-self.window :], self.history[-2 * self.window : -self.window]
        if len(before) == self.window and all(self.format_key in h and self.accuracy_key in h for h in recent + before):
            mean = lambda rows, key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
            d_format = mean(recent, self.format_key) - mean(before, self.format_key)
            d_accuracy = mean(recent, self.accuracy_key) - mean(before, self.accuracy_key)
            if d_format > self.min_change and d_accuracy < -self.min_change:
                found["format_up_accuracy_down"] = (
                    f"format reward rose by {d_format:+.3f} while accuracy fell by {d_accuracy:+.3f} over the last "
                    f"{self.window} logs: the policy may be learning the format instead of the task (reward hacking)"
                )
        length = latest.get("train/completion_length")
        if length is not None and self.first_length:
            if length < self.collapse_ratio * self.first_length:
                found["length_collapse"] = (
                    f"response length collapsed to {length:.1f} tokens from {self.first_length:.1f} at the start"
                )
            elif length > self.explode_ratio * self.first_length:
                found["length_explosion"] = (
                    f"response length exploded to {length:.1f} tokens from {self.first_length:.1f} at the start"
                )
        truncated = latest.get("train/truncated_fraction")
        if truncated is not None and truncated > self.truncation_threshold:
            found["truncation"] = (
                f"{100 * truncated:.0f}% of completions hit max_new_tokens: most answers are cut off (raise "
                "`sampling.max_new_tokens`, or add a length penalty)"
            )
        return found

    def update(self, values: dict[str, float]) -> list[str]:
        """Record one logging step's window means; the warnings of alarms that start now."""
        self.history.append({k: v for k, v in values.items() if v == v})  # NaN: nothing logged
        if self.first_length is None and values.get("train/completion_length"):
            self.first_length = values["train/completion_length"]
        found = self._conditions()
        started = [found[name] for name in found if name not in self.active]
        self.active = set(found)
        return started

    def state(self) -> dict[str, Any]:
        return {"history": self.history[-2 * self.window :], "first_length": self.first_length,
                "active": sorted(self.active)}  # fmt: skip

    def restore(self, state: dict[str, Any]) -> None:
        self.history = list(state.get("history", []))
        self.first_length = state.get("first_length")
        self.active = set(state.get("active", []))


class PerDifficulty:
    """Sums of per-item quantities grouped by a record's ``difficulty``, turned into means per level:
    does RL spend more tokens, and win more, on harder problems?

    >>> tally = PerDifficulty({"length": "val/completion_length", "pass@1": "val/pass@1"})
    >>> tally.add(2, 1, length=30.0, **{"pass@1": 0.5}); tally.add(1, 2, length=26.0, **{"pass@1": 2.0})
    >>> for key, value in tally.pop_means().items(): print(key, value)
    val/completion_length/difficulty_1 13.0
    val/pass@1/difficulty_1 1.0
    val/completion_length/difficulty_2 30.0
    val/pass@1/difficulty_2 0.5
    >>> tally.pop_means()
    {}
    """

    def __init__(self, metric_names: dict[str, str]) -> None:
        self.metric_names = metric_names  # quantity -> metric prefix
        self.sums: dict[str, dict[str, float]] = {}

    def add(self, level: Any, count: int, **totals: float) -> None:
        """``count`` more items at ``level`` whose quantities sum to ``totals``."""
        sums = self.sums.setdefault(str(level), dict.fromkeys([*self.metric_names, "count"], 0.0))
        for name, value in totals.items():
            sums[name] += value
        sums["count"] += count

    def merge(self, parts: list[dict[str, dict[str, float]]]) -> None:
        """Add other tallies' ``sums`` (e.g. gathered from the other ranks) to this one."""
        for part in parts:
            for level, sums in part.items():
                self.add(level, int(sums["count"]), **{k: v for k, v in sums.items() if k != "count"})

    def pop_means(self) -> dict[str, float]:
        """``<prefix>/difficulty_<level>`` means (levels in numeric order), and start over."""
        sums, self.sums = self.sums, {}
        means = {}
        for level in sorted(sums, key=lambda v: (len(v), v)):
            for name, prefix in self.metric_names.items():
                means[f"{prefix}/difficulty_{level}"] = sums[level][name] / max(sums[level]["count"], 1)
        return means
