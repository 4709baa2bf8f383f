"""Accuracy reward: is the completion's final answer equivalent to the reference ``answer`` column?"""

from __future__ import annotations

import re
from typing import Any

from r1_lightning.rewards._text import Completion, completion_text, extract_answer
from r1_lightning.rewards.limits import call_with_deadline
from r1_lightning.verify import math_equal

#: seconds one answer comparison may take (in a child process, killed at the deadline); see limits.py.
VERIFY_TIMEOUT_SECONDS = 2.0


def _normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().strip(".").strip("$")).lower()


def answers_match(predicted: str, gold: str) -> bool:
    r"""Math-verify equivalence of two answers, with a normalised string comparison as fallback.

    >>> answers_match("0.5", r"\frac{1}{2}")
    True
    >>> answers_match("x + 1", "1+x")
    True
    >>> answers_match("Paris", "paris")
    True
    >>> answers_match("7", "8")
    False
    """
    if _normalize(predicted) == _normalize(gold):
        return True
    return math_equal(predicted, gold)


def accuracy_reward(
    completions: list[Completion],
    answer: list[Any],
    timeout_seconds: float | None = VERIFY_TIMEOUT_SECONDS,
    **kwargs: Any,
) -> list[float | None]:
    r"""1.0 when the final answer (``<answer>`` tag, else last ``\boxed{}``) equals ``answer``, else 0.0.

    Equivalence is math-verify's (``0.5`` = ``\frac{1}{2}``); plain strings compare normalised. A record
    without a reference answer scores ``None`` (not applicable), as in TRL. Answers that are not equal
    as strings are compared symbolically in child processes, each comparison bounded by
    ``timeout_seconds`` (a timeout scores 0 and is counted); ``None`` compares in this process.

    >>> accuracy_reward(["<think>..</think><answer>\\frac{1}{2}</answer>", "<answer>3</answer>"],
    ...                 answer=["0.5", "4"])
    [1.0, 0.0]
    >>> accuracy_reward(["<answer>1</answer>"], answer=[None])
    [None]
    """
    scores: list[float | None] = [None] * len(completions)
    symbolic: list[tuple[int, str, str]] = []  # (index, predicted, gold) still to compare with math-verify
    for i, (completion, gold) in enumerate(zip(completions, answer, strict=True)):
        if gold is None or str(gold).strip() == "":
            continue
        predicted = extract_answer(completion_text(completion))
        if predicted is None:
            scores[i] = 0.0
        elif _normalize(predicted) == _normalize(str(gold)):
            scores[i] = 1.0
        else:
            symbolic.append((i, predicted, str(gold)))
    pairs = [(predicted, gold) for _, predicted, gold in symbolic]
    if timeout_seconds is None:
        equal = [math_equal(*pair) for pair in pairs]
    else:
        equal = call_with_deadline("accuracy_reward", math_equal, pairs, timeout_seconds) if pairs else []
    for (i, _, _), same in zip(symbolic, equal, strict=True):
        scores[i] = float(bool(same))  # a timeout (None) scores 0
    return scores
