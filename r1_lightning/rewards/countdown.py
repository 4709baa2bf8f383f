"""Countdown reward: the answer is an equation using each given number once that equals the target."""

from __future__ import annotations

import ast
import operator
from collections import Counter
from typing import Any

from r1_lightning.text import Completion, completion_text, extract_answer

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _evaluate(node: ast.AST, used: list[int]) -> float:
    """Evaluate + - * / over integer literals only (no names, calls or powers), recording the literals."""
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, used)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_evaluate(node.left, used), _evaluate(node.right, used))
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        used.append(node.value)
        return node.value
    raise ValueError("only integers and + - * / are allowed")


def countdown_reward(
    completions: list[Completion], numbers: list[list[int]], target: list[int], **kwargs: Any
) -> list[float]:
    """1.0 when the ``<answer>`` equation uses exactly the given numbers, each once, and equals ``target``.

    The left-hand side of an ``expr = value`` answer is the equation.

    >>> countdown_reward(["<answer>(3 + 5) * 2</answer>", "<answer>3 * 5</answer>", "<answer>2**4</answer>"],
    ...                  numbers=[[2, 3, 5]] * 3, target=[16] * 3)
    [1.0, 0.0, 0.0]
    """
    scores = []
    for completion, nums, goal in zip(completions, numbers, target, strict=True):
        answer = extract_answer(completion_text(completion))
        score = 0.0
        if answer and len(answer) < 200:
            equation = answer.split("=")[0]
            used: list[int] = []
            try:
                value = _evaluate(ast.parse(equation, mode="eval"), used)
                if Counter(used) == Counter(int(n) for n in nums) and abs(value - float(goal)) < 1e-6:
                    score = 1.0
            except (SyntaxError, ValueError, ZeroDivisionError, TypeError, RecursionError, OverflowError):
                pass
        scores.append(score)
    return scores
