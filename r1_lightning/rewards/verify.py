"""Symbolic answer equivalence with math-verify, importable on its own (reward worker processes load
only this and math-verify, not the trainer's stack)."""

from __future__ import annotations

import re
import threading

from math_verify import parse, verify

#: math-verify's own, signal-based time limit in seconds (works in a process's main thread only; the
#: hard limit is the worker process's deadline, see ``r1_lightning.rewards.limits``).
SOFT_TIMEOUT_SECONDS = 1


def _timeout() -> int | None:
    return SOFT_TIMEOUT_SECONDS if threading.current_thread() is threading.main_thread() else None


#: an unescaped ``$`` (a LaTeX math delimiter); ``\$`` is a dollar sign
_MATH_DOLLAR = re.compile(r"(?<!\\)\$")
#: a currency amount written with a bare dollar sign: ``$1,000``, ``$ 16386.17``
_CURRENCY = re.compile(r"^\s*\$\s*(?=[\d.,]+\s*$)")
#: a bare number with thousands separators (``1 000``, ``1,000.5``) or a two-digit decimal comma
#: (``1000,99``); ``1,2`` is not one (a pair, as LaTeX reads it)
_PLAIN_NUMBER = re.compile(r"^\s*[-+]?(?:\d{1,3}(?:[ ,]\d{3})+(?:\.\d+)?|\d+,\d{2}|\d+(?:\.\d+)?)\s*$")


def _parse(text: str) -> list:
    r"""math-verify parse of a bare answer, read as LaTeX first (``$...$``) so ``1+x`` is not just ``1``.

    Money is common in GSM8K and MATH answers: an escaped dollar (``\$16386.17``) is not a math
    delimiter, so such an answer is still read as LaTeX, and a bare currency prefix (``$1,000``) is
    escaped first. A plain number is read by math-verify's expression extractor first, which knows
    thousands separators and decimal commas (``1 000``, ``1000,99``).

    >>> _parse(r"\$16386.17")[0], _parse("$1,000")[0], _parse("1 000")[0]
    (16386.1700000000, 1000, 1000)
    """
    from math_verify import ExprExtractionConfig

    text = _CURRENCY.sub(r"\\$", text)
    if _PLAIN_NUMBER.match(text):
        parsed = parse(text, extraction_config=[ExprExtractionConfig()], parsing_timeout=_timeout())
        if parsed:
            return parsed
    if not _MATH_DOLLAR.search(text) and "\\boxed" not in text:
        parsed = parse(f"${text}$", parsing_timeout=_timeout())
        if parsed:
            return parsed
    return parse(text, parsing_timeout=_timeout())


def _parse_completion(text: str) -> list:
    """math-verify's own extraction from a whole completion, as TRL's ``accuracy_reward`` does: LaTeX,
    ``\\boxed{}`` first, only inside math delimiters, units normalised."""
    from latex2sympy2_extended import NormalizationConfig
    from math_verify import LatexExtractionConfig

    config = LatexExtractionConfig(
        normalization_config=NormalizationConfig(units=True), boxed_match_priority=0, try_extract_without_anchor=False
    )
    return parse(text, extraction_config=[config], extraction_mode="first_match", parsing_timeout=_timeout())


def gold_parses(gold: str) -> bool:
    r"""Whether math-verify reads a reference answer as math (it falls back to the raw string when it
    cannot: that fallback does not count).

    >>> gold_parses(r"\frac{1}{2}"), gold_parses(r"\frac{1}{")
    (True, False)
    """
    try:
        return any(not isinstance(item, str) for item in _parse(gold))
    except (MemoryError, RecursionError):
        return False


def trl_gold_parses(gold: str) -> bool:
    """Whether math-verify's default ``parse`` (no ``$...$`` wrapping: TRL's and open-r1's reading of a
    reference) finds anything in ``gold``; "forty two" gives nothing."""
    try:
        return bool(parse(gold, parsing_timeout=_timeout()))
    except (MemoryError, RecursionError):
        return False


def math_equal(
    predicted: str, gold: str, float_rounding: int = 6, strict: bool = True, whole_completion: bool = False
) -> bool:
    r"""Whether math-verify finds the two answers equivalent (``0.5`` and ``\frac{1}{2}``).

    Args:
        float_rounding: decimal places numbers are rounded to before comparing (math-verify's).
        strict: math-verify's strict mode (variables and set/interval types must match too).
        whole_completion: ``predicted`` is a whole completion; math-verify extracts the answer itself.

    >>> math_equal("0.5", r"\frac{1}{2}"), math_equal("7", "8")
    (True, False)
    >>> math_equal("3.14159", "3.14", float_rounding=2), math_equal("3.14159", "3.14")
    (True, False)
    """
    try:
        gold_parsed = _parse(gold)
        pred_parsed = _parse_completion(predicted) if whole_completion else _parse(predicted)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(
            verify(gold_parsed, pred_parsed, float_rounding=float_rounding, strict=strict, timeout_seconds=_timeout())
        )
    except (MemoryError, RecursionError):  # an answer built to exhaust the verifier is not a right one
        return False
