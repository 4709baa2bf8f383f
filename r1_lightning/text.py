"""Reading completions and answers: the text of a completion (a string or chat messages), its final
answer (`<answer>` tag, else the last `\\boxed{}`). Used by rewards, data parsing and evaluation alike."""

from __future__ import annotations

import re
from typing import Any

Completion = str | list[dict[str, Any]]

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def completion_text(completion: Completion) -> str:
    """The text of a completion: itself if a string, else the last message's ``content`` (TRL's format).

    >>> completion_text([{"role": "assistant", "content": "hi"}])
    'hi'
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    raise TypeError(
        "a completion must be a string or a list of chat messages ({'role': ..., 'content': ...}); "
        f"got {type(completion).__name__}"
    )


def last_boxed(text: str) -> str | None:
    r"""Content of the last ``\boxed{...}`` in ``text``, braces balanced, or None.

    >>> last_boxed(r"so \boxed{1} no, \boxed{\frac{1}{2}}")
    '\\frac{1}{2}'
    """
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None


def extract_answer(text: str) -> str | None:
    r"""The final answer of a completion: the last ``<answer>...</answer>``, else the last ``\boxed{}``.

    A ``\boxed{}`` inside the answer tags wins over the tag's raw text.

    >>> extract_answer("<think>2+2</think> <answer> 4 </answer>")
    '4'
    >>> extract_answer(r"The answer is \boxed{4}.")
    '4'
    >>> extract_answer("no answer here") is None
    True
    """
    tagged = _ANSWER.findall(text)
    if tagged:
        inner = tagged[-1]
        boxed = last_boxed(inner)
        return (boxed if boxed is not None else inner).strip()
    boxed = last_boxed(text)
    return boxed.strip() if boxed is not None else None
