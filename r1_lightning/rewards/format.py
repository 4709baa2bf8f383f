"""Format rewards for the R1-Zero structure ``<think> reasoning </think> <answer> answer </answer>``."""

from __future__ import annotations

import re
from typing import Any

from r1_lightning.text import Completion, completion_text

TAGS = ("<think>", "</think>", "<answer>", "</answer>")
# Exactly one think block then exactly one answer block, nothing outside them but whitespace, no tag
# nested inside a block. The R1-Zero prompt ends with "Assistant:", so a completion may open with a space.
_STRICT = re.compile(
    r"^\s*<think>(?:(?!</?think>|</?answer>).)*</think>\s*<answer>(?:(?!</?think>|</?answer>).)*</answer>\s*$",
    re.DOTALL,
)


def format_reward(completions: list[Completion], **kwargs: Any) -> list[float]:
    """1.0 when a completion is exactly ``<think>...</think><answer>...</answer>`` (whitespace aside).

    >>> format_reward([" <think> 2 + 2 = 4 </think> <answer> 4 </answer>",
    ...                "<think>a</think><answer>4</answer> extra",
    ...                "<answer>4</answer>"])
    [1.0, 0.0, 0.0]
    """
    return [1.0 if _STRICT.match(completion_text(c)) else 0.0 for c in completions]


def tag_count_reward(completions: list[Completion], **kwargs: Any) -> list[float]:
    """Partial credit: 0.25 for each of the four tags that appears exactly once.

    >>> tag_count_reward(["<think>x</think><answer>y</answer>", "<think>x</think>", "plain"])
    [1.0, 0.5, 0.0]
    """
    texts = [completion_text(c) for c in completions]
    return [0.25 * sum(text.count(tag) == 1 for tag in TAGS) for text in texts]
