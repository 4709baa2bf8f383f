"""Symbolic answer equivalence with math-verify, importable on its own (reward worker processes load
only this and math-verify, not the trainer's stack)."""

from __future__ import annotations

import threading

from math_verify import parse, verify

#: math-verify's own, signal-based time limit in seconds (works in a process's main thread only; the
#: hard limit is the worker process's deadline, see ``r1_lightning.rewards.limits``).
SOFT_TIMEOUT_SECONDS = 1


def _timeout() -> int | None:
    return SOFT_TIMEOUT_SECONDS if threading.current_thread() is threading.main_thread() else None


def _parse(text: str) -> list:
    """math-verify parse of a bare answer, read as LaTeX first (``$...$``) so ``1+x`` is not just ``1``."""
    if "$" not in text and "\\boxed" not in text:
        parsed = parse(f"${text}$", parsing_timeout=_timeout())
        if parsed:
            return parsed
    return parse(text, parsing_timeout=_timeout())


def math_equal(predicted: str, gold: str) -> bool:
    r"""Whether math-verify finds the two answers equivalent (``0.5`` and ``\frac{1}{2}``).

    >>> math_equal("0.5", r"\frac{1}{2}"), math_equal("7", "8")
    (True, False)
    """
    try:
        gold_parsed, pred_parsed = _parse(gold), _parse(predicted)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=_timeout()))
    except (MemoryError, RecursionError):  # an answer built to exhaust the verifier is not a right one
        return False
