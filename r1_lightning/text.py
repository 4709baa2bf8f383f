"""Reading completions and answers: the text of a completion (a string or chat messages), its final
answer (`<answer>` tag, else its `\\boxed{}` parts). Used by rewards, data parsing and evaluation alike."""

from __future__ import annotations

import re
from typing import Any

Completion = str | list[dict[str, Any]]

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def completion_text(completion: Completion) -> str:
    """The text of a completion: itself if a string, else the messages' ``content`` (TRL's format): the one
    message's, or for a tool-calling conversation the assistant messages' joined (the model's own text, tool
    turns left out, so ``<think>`` opened before a call and closed after it reads as one block).

    >>> completion_text([{"role": "assistant", "content": "hi"}])
    'hi'
    >>> completion_text([{"role": "assistant", "content": "<think>1+2="}, {"role": "tool", "content": "3"},
    ...                  {"role": "assistant", "content": "3</think> <answer>3</answer>"}])
    '<think>1+2=3</think> <answer>3</answer>'
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and all(isinstance(m, dict) for m in completion):
        if len(completion) == 1:
            return str(completion[0].get("content", ""))
        return "".join(str(m.get("content", "")) for m in completion if m.get("role", "assistant") == "assistant")
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


def boxed_parts(text: str) -> list[str]:
    r"""Contents of every ``\boxed{...}`` in ``text``, braces balanced, in order (an unclosed one ends the list).

    >>> boxed_parts(r"\boxed{(2,2)} and \boxed{\frac{1}{2}}")
    ['(2,2)', '\\frac{1}{2}']
    """
    parts, start = [], text.find("\\boxed{")
    while start >= 0:
        depth, i = 0, start + len("\\boxed")
        for j in range(i, len(text)):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            if depth == 0:
                parts.append(text[i + 1 : j])
                break
        else:
            return parts
        start = text.find("\\boxed{", j)
    return parts


def boxed_answer(text: str) -> str | None:
    r"""The answer the ``\boxed{}`` parts of ``text`` give, read as Math-Verify reads them: one part is the
    answer; several distinct parts are one answer listing them (``\boxed{1}, \boxed{2}`` is ``1, 2``,
    which math-verify compares as the set {1, 2}); repeats of one part count once.

    >>> boxed_answer(r"\boxed{(2,2)} and \boxed{(6,2)}"), boxed_answer(r"\boxed{4}. So \boxed{4}")
    ('(2,2), (6,2)', '4')
    """
    parts = list(dict.fromkeys(part.strip() for part in boxed_parts(text)))
    return ", ".join(parts) if parts else None


def extract_answer(text: str) -> str | None:
    r"""The final answer of a completion: the last ``<answer>...</answer>``, else its ``\boxed{}`` parts.

    ``\boxed{}`` parts inside the answer tags win over the tag's raw text. Several boxed parts are one
    answer that lists them (:func:`boxed_answer`), as Math-Verify reads a completion.

    >>> extract_answer("<think>2+2</think> <answer> 4 </answer>")
    '4'
    >>> extract_answer(r"The answer is \boxed{4}.")
    '4'
    >>> extract_answer(r"<answer>\boxed{1}, \boxed{2}, \boxed{3}</answer>")
    '1, 2, 3'
    >>> extract_answer("no answer here") is None
    True
    """
    tagged = _ANSWER.findall(text)
    if tagged:
        inner = tagged[-1]
        boxed = boxed_answer(inner)
        return (boxed if boxed is not None else inner).strip()
    return boxed_answer(text)
