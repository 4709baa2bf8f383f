"""Code reward: run the completion's Python against the record's test cases in a sandbox (``sandbox.py``)."""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any

from r1_lightning.rewards.limits import record_reward_event
from r1_lightning.rewards.sandbox import SandboxLimits, run_many
from r1_lightning.text import Completion, completion_text

log = logging.getLogger(__name__)

_CODE_BLOCK = re.compile(r"```(?:python|py|python3)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


def extract_code(text: str) -> str | None:
    """The last fenced Python block of the final answer (the text after ``</think>``, else all of it).

    >>> extract_code("<think>```python\\nx = 1\\n```</think><answer>```python\\ndef f():\\n    return 2\\n```</answer>")
    'def f():\\n    return 2\\n'
    >>> extract_code("no code") is None
    True
    """
    answer = text.rsplit("</think>", 1)[-1]
    blocks = _CODE_BLOCK.findall(answer)
    return blocks[-1] if blocks else None


def _as_tests(value: Any, row: int) -> list[str]:
    """A record's ``tests``: a list of statements, one string of newline-separated asserts, or JSON."""
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.startswith("["):
            value = json.loads(stripped)
        else:
            return [line for line in stripped.splitlines() if line.strip()]
    if isinstance(value, (list, tuple)) and all(isinstance(t, str) for t in value):
        return list(value)
    raise ValueError(
        f"code_reward: the `tests` column of record {row} must be a list of Python statements "
        f"(e.g. ['assert f(2) == 4']) or a string of them, one per line; got {type(value).__name__}"
    )


def code_reward(
    completions: list[Completion],
    tests: list[Any],
    test_setup: list[str] | None = None,
    partial_credit: bool = False,
    wall_seconds: float = 5.0,
    cpu_seconds: int = 3,
    memory_mb: int = 256,
    workers: int | None = None,
    **kwargs: Any,
) -> list[float | None]:
    """1.0 when the completion's last fenced Python block passes every test of its record, else 0.0.

    Each completion runs in its own sandboxed process (``r1_lightning.rewards.sandbox``: CPU, wall-time and
    memory limits, no network, a throwaway directory, no access to the user's files), ``workers`` at a
    time. A completion that loops, crashes, exceeds a limit or does something forbidden scores 0;
    outcomes are counted per rollout (``code_runs/<outcome>``, see ``limits.count_reward_events``).
    Records without tests score ``None`` (not applicable).

    Args:
        tests: per record, the test statements (``assert solution(3) == 9``), MBPP's ``test_list`` style.
        test_setup: per record, code run after the program and before the tests (imports, helpers).
        partial_credit: score the fraction of tests passed instead of all-or-nothing.
        wall_seconds, cpu_seconds, memory_mb: the sandbox's limits per completion.
        workers: parallel sandboxes (default: the number of CPU cores).
    """
    limits = SandboxLimits(wall_seconds=wall_seconds, cpu_seconds=cpu_seconds, memory_mb=memory_mb)
    scores: list[float | None] = [None] * len(completions)
    jobs, rows = [], []
    for i, (completion, record_tests) in enumerate(zip(completions, tests, strict=True)):
        if record_tests is None or (isinstance(record_tests, (list, str)) and not record_tests):
            continue
        code = extract_code(completion_text(completion))
        if code is None:
            record_reward_event("code_runs/no_code")
            scores[i] = 0.0
            continue
        setup = (test_setup[i] if test_setup else "") or ""
        jobs.append((code, _as_tests(record_tests, i), setup))
        rows.append(i)
    for i, result in zip(rows, run_many(jobs, limits, workers or os.cpu_count() or 1), strict=True):
        record_reward_event(f"code_runs/{result.status}")
        if result.status != "ok":
            log.info("code_reward: completion %d scored 0 (%s: %s)", i, result.status, result.detail)
        if result.total == 0:
            scores[i] = 0.0
        elif partial_credit:
            scores[i] = result.passed / result.total
        else:
            scores[i] = float(result.passed == result.total)
    return scores
