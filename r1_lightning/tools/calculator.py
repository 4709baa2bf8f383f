"""A calculator the policy can call: ``<tool_call>{"name": "add", "arguments": {"a": 47, "b": 85}}</tool_call>``."""

from __future__ import annotations


def add(a: int, b: int) -> int:
    """Add two whole numbers exactly.

    Args:
        a: the first number
        b: the second number
    """
    return int(a) + int(b)


def multiply(a: int, b: int) -> int:
    """Multiply two whole numbers exactly.

    Args:
        a: the first number
        b: the second number
    """
    return int(a) * int(b)
