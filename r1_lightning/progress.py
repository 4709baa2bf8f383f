"""Progress that a user sees whether the output is a terminal or a file (``tail -f run.log``).

On a terminal it is a tqdm bar (with ETA); otherwise one plain line every ``every`` items and at the end,
each with the rate and the ETA, so a redirected run never goes silent for minutes.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_seconds(seconds: float) -> str:
    """``format_seconds(75)`` -> ``'1:15'``; hours when needed.

    >>> format_seconds(75), format_seconds(3725)
    ('1:15', '1:02:05')
    """
    seconds = int(round(max(seconds, 0)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """``with Progress(total, "tiny base pretraining") as bar: ... bar.update(1, loss=0.3)``.

    Args:
        total: number of items.
        description: what is being done, printed on every line.
        every: plain-line mode prints every this many items (default: every 10%).
        stream: where to write (default ``sys.stderr``).
        bar: force (True) or refuse (False) the tqdm bar; default: only on a terminal.
        start: items already done (a resumed run): counted in the position, not in the rate.
    """

    def __init__(
        self,
        total: int,
        description: str,
        every: int | None = None,
        stream: TextIO | None = None,
        bar: bool | None = None,
        start: int = 0,
    ) -> None:
        self.total, self.description = max(int(total), 1), description
        self.every = every or max(self.total // 10, 1)
        self.stream = stream or sys.stderr
        self.start = self.done = min(max(int(start), 0), self.total)
        self.started = time.perf_counter()
        use_bar = bar if bar is not None else bool(getattr(self.stream, "isatty", lambda: False)())
        self._bar = None
        if use_bar:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=self.total, initial=self.start, desc=description, file=self.stream, dynamic_ncols=True
            )

    def line(self, **fields: float) -> str:
        """The plain progress line for the current count."""
        elapsed = time.perf_counter() - self.started
        rate = (self.done - self.start) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        extra = "".join(f" {k} {v:.4g}" for k, v in fields.items())
        eta_text = format_seconds(eta) if eta == eta else "?"
        return (
            f"{self.description}: {self.done}/{self.total} ({100 * self.done / self.total:.0f}%)"
            f" elapsed {format_seconds(elapsed)} ETA {eta_text}{extra}"
        )

    def update(self, n: int = 1, **fields: float) -> None:
        before, self.done = self.done, min(self.done + n, self.total)
        if self._bar is not None:
            self._bar.update(self.done - before)
            if fields:
                self._bar.set_postfix({k: f"{v:.4g}" for k, v in fields.items()}, refresh=False)
        elif self.done // self.every > before // self.every or self.done == self.total:
            print(self.line(**fields), file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
