"""Accuracy reward: is the completion's final answer equivalent to the reference ``answer`` column?"""

from __future__ import annotations

import re
from typing import Any, Literal

from r1_lightning.rewards.limits import call_with_deadline
from r1_lightning.rewards.verify import gold_parses, math_equal, trl_gold_parses
from r1_lightning.text import Completion, completion_text, extract_answer

#: seconds one answer comparison may take (in a child process, killed at the deadline); see limits.py.
VERIFY_TIMEOUT_SECONDS = 2.0


#: LaTeX markup: a backslash command, braces, or math delimiters
_LATEX_MARKUP = re.compile(r"\\[a-zA-Z]+|[{}^_]|(?<!\\)\$")


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


def _gold_unreadable(gold: str) -> bool:
    """A reference written as math (LaTeX markup) that math-verify cannot read: nothing to compare to.

    A plain-text reference (``Paris``, ``yes``) is compared as text instead, a deliberate difference
    from TRL, which skips every reference math-verify cannot parse.
    """
    return bool(_LATEX_MARKUP.search(gold)) and not gold_parses(gold)


def accuracy_reward(
    completions: list[Completion],
    answer: list[Any] | None = None,
    timeout_seconds: float | None = VERIFY_TIMEOUT_SECONDS,
    solution: list[Any] | None = None,
    float_rounding: int = 6,
    strict: bool = True,
    extraction: Literal["answer_tag_or_boxed", "math_verify"] = "answer_tag_or_boxed",
    **kwargs: Any,
) -> list[float | None]:
    r"""1.0 when the completion's final answer equals the reference, else 0.0; ``None`` (not
    applicable, the row adds nothing: TRL's convention) without a reference, or for a reference written
    in LaTeX that math-verify cannot read.

    Args:
        answer / solution: the reference per completion (this project's records name it ``answer``;
            TRL's and open-r1's datasets ``solution``; with both, ``answer`` is used).
        timeout_seconds: hard deadline of each symbolic comparison (a child process killed at it; a
            timeout scores 0 and is counted); ``None`` compares in this process.
        float_rounding: decimal places numbers are rounded to before comparing (math-verify's).
        strict: math-verify's strict comparison (variables, sets and intervals must match in kind).
        extraction: where the predicted answer comes from: ``answer_tag_or_boxed`` (the last
            ``<answer>...</answer>``, else the last ``\boxed{}``: the R1 format), or ``math_verify``
            (math-verify's own extraction from the whole completion, ``\boxed{}`` first, as TRL does).

    Equivalence is math-verify's (``0.5`` = ``\frac{1}{2}``, ``\$1,000`` = ``1000``); plain strings
    compare normalised. Answers that are not equal as strings are compared symbolically.

    >>> accuracy_reward(["<think>..</think><answer>\\frac{1}{2}</answer>", "<answer>3</answer>"],
    ...                 answer=["0.5", "4"])
    [1.0, 0.0]
    >>> accuracy_reward(["<answer>1</answer>", "<answer>1</answer>"], answer=[None, r"\frac{1}{"])
    [None, None]
    >>> accuracy_reward([[{"role": "assistant", "content": "\\boxed{\\$16,386.17}"}]], solution=["16386.17"])
    [1.0]
    """
    if answer is None:
        if solution is None:
            raise TypeError("accuracy_reward needs the reference as `answer` or `solution` (a dataset column)")
        answer = solution
    if extraction not in ("answer_tag_or_boxed", "math_verify"):
        raise ValueError(
            f"accuracy_reward: `extraction` must be 'answer_tag_or_boxed' or 'math_verify', got {extraction!r}"
        )
    whole = extraction == "math_verify"
    scores: list[float | None] = [None] * len(completions)
    symbolic: list[tuple[int, str, str]] = []  # (index, predicted, gold) still to compare with math-verify
    unreadable: dict[str, bool] = {}  # per distinct reference (a group shares one)
    for i, (completion, gold) in enumerate(zip(completions, answer, strict=True)):
        if gold is None or str(gold).strip() == "":
            continue
        gold = str(gold)
        if gold not in unreadable:  # math_verify mode: TRL's rule (whatever its parse cannot read)
            unreadable[gold] = not trl_gold_parses(gold) if whole else _gold_unreadable(gold)
        if unreadable[gold]:
            continue
        text = completion_text(completion)
        predicted = text if whole else extract_answer(text)
        if predicted is None:
            scores[i] = 0.0
        elif not whole and _normalize(predicted) == _normalize(gold):
            scores[i] = 1.0
        else:
            symbolic.append((i, predicted, gold))
    pairs = [(predicted, gold) for _, predicted, gold in symbolic]
    settings = {"float_rounding": float_rounding, "strict": strict, "whole_completion": whole}
    if timeout_seconds is None:
        equal = [math_equal(*pair, **settings) for pair in pairs]
    elif pairs:
        equal = call_with_deadline("accuracy_reward", math_equal, pairs, timeout_seconds, settings)
    else:
        equal = []
    for (i, _, _), same in zip(symbolic, equal, strict=True):
        scores[i] = float(bool(same))  # a timeout (None) scores 0
    return scores
