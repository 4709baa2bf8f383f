"""Runs one tool call inside a reward/tool worker process (``rewards/limits.py``): stdlib only, so a worker
imports it in milliseconds. What the tool prints is captured (up to a cap, the rest discarded, so a tool that
prints megabytes neither floods the console nor the pipe) and returned with its result."""

from __future__ import annotations

import contextlib
import io
from typing import Any


class _CappedWriter(io.TextIOBase):
    def __init__(self, limit: int) -> None:
        self.limit, self.parts, self.size, self.dropped = limit, [], 0, 0

    def write(self, text: str) -> int:
        room = self.limit - self.size
        if room > 0:
            self.parts.append(text[:room])
            self.size += min(len(text), room)
        self.dropped += max(0, len(text) - max(room, 0))
        return len(text)

    def text(self) -> str:
        return "".join(self.parts)


def invoke_tool(fn: Any, arguments: dict, max_chars: int) -> tuple[str, int]:
    """``(printed output + str(result), characters cut)``, the text cut to ``max_chars``."""
    printed = _CappedWriter(max_chars)
    with contextlib.redirect_stdout(printed):
        result = fn(**arguments)
    text = printed.text() + ("" if result is None else str(result))
    cut = printed.dropped + max(0, len(text) - max_chars)
    return text[:max_chars], cut
