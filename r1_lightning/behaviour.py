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
