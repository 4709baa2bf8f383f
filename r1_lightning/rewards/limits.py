"""Time limits for reward functions: calls run in child processes that are killed at their deadline.

Why processes: answer verification (sympy, via math-verify) can spend hours inside one C call on an
adversarial string (``9^{9^{9^{9}}}``, thousands of nested braces); a signal-based timeout (what
math-verify offers) only fires between bytecodes and only in the main thread, so it neither stops that
nor works in worker threads. A child process can always be killed. A call past its deadline scores 0,
is counted against the rollout being scored (``count_reward_events``; logged as
``train/reward_timeouts/<fn>``) and never holds training up for longer than its deadline.

The pool is per process (rebuilt after a fork, e.g. in DDP ranks or data-loader workers); its children
are fresh interpreters (``r1_lightning.rewards._worker``), so they inherit no CUDA context or thread pool.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import selectors
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

from r1_lightning.rewards import _worker
from r1_lightning.rewards._worker import read_message, write_message

log = logging.getLogger(__name__)

#: The counter of the rollout being scored (``count_reward_events``); None outside one. A context
#: variable, not a global tally: each rollout (and each pipeline stage's module) counts its own.
_EVENTS: ContextVar[Counter[str] | None] = ContextVar("reward_events", default=None)


def record_reward_event(key: str, count: int = 1) -> None:
    """Count an event (``reward_timeouts/<fn>``, ``code_runs/<outcome>``) against the current rollout."""
    counter = _EVENTS.get()
    if counter is not None:
        counter[key] += count


@contextlib.contextmanager
def count_reward_events() -> Iterator[Counter[str]]:
    """``with count_reward_events() as events: score(...)``: the events recorded while scoring."""
    counter: Counter[str] = Counter()
    token = _EVENTS.set(counter)
    try:
        yield counter
    finally:
        _EVENTS.reset(token)


class _Worker:
    """One ``python .../_worker.py`` child and its pipes."""

    def __init__(self, preload: tuple[str, ...]) -> None:
        # Run as a script (not -m): importing the package first would cost the start-up of torch.
        # The parent's sys.path goes along so reward functions from the user's modules resolve.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self.process = subprocess.Popen(
            [sys.executable, _worker.__file__, *preload],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        self.ready = False

    def wait_ready(self) -> None:
        """Block until the child has imported its modules (no deadline: start-up is not the call's time)."""
        if not self.ready:
            try:
                status, _ = self.recv()
            except EOFError as err:
                raise RuntimeError("a reward worker process failed to start (see its error above)") from err
            self.ready = status == "ready"

    def fileno(self) -> int:
        return self.process.stdout.fileno()

    def send(self, message: Any) -> None:
        write_message(self.process.stdin, message)

    def recv(self) -> Any:
        return read_message(self.process.stdout)

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)
        for stream in (self.process.stdin, self.process.stdout):
            stream.close()


class TimeLimitedPool:
    """A few child processes that run calls in parallel, each call bounded by a deadline.

    Args:
        workers: child processes (calls of one ``map`` run this many at a time).
    """

    def __init__(self, workers: int = 2, preload: tuple[str, ...] = ("r1_lightning.rewards.verify",)) -> None:
        self.size = max(1, workers)
        self.preload = tuple(preload)
        self.workers: list[_Worker] = []
        self.pid = os.getpid()
        # Batches may be scored from several threads at once (asynchronous rollouts, validation): one map at
        # a time owns the children and their pipes.
        self.lock = threading.RLock()

    def add_preload(self, module: str) -> None:
        """Import ``module`` in every worker before its first call (running workers are restarted)."""
        with self.lock:
            if module not in self.preload:
                self.preload = (*self.preload, module)
                self.close()
                self.pid = os.getpid()

    def _ensure(self) -> None:
        if self.pid != os.getpid():  # forked: the children belong to the parent process
            self.workers, self.pid = [], os.getpid()
        self.workers = [w for w in self.workers if w.alive()]
        while len(self.workers) < self.size:
            self.workers.append(_Worker(self.preload))
        for worker in self.workers:
            worker.wait_ready()

    def map(
        self, fn: Callable, calls: list[tuple], timeout: float, kwargs: dict | None = None
    ) -> list[tuple[str, Any]]:
        """Run ``fn(*args, **kwargs)`` for each ``args`` in ``calls``; returns per call ``("ok", value)``,
        ``("error", text)`` (it raised), ``("timeout", None)`` or ``("died", None)`` (the child was killed).
        ``fn`` must be picklable (a module-level function)."""
        with self.lock:
            return self._map(fn, calls, timeout, kwargs)

    def _map(self, fn: Callable, calls: list[tuple], timeout: float, kwargs: dict | None) -> list[tuple[str, Any]]:
        self._ensure()
        results: list[tuple[str, Any] | None] = [None] * len(calls)
        pending = list(range(len(calls)))[::-1]
        busy: dict[int, tuple[_Worker, float]] = {}  # call index -> (worker, deadline)
        idle = list(self.workers)
        while pending or busy:
            while pending and idle:
                index, worker = pending.pop(), idle.pop()
                try:
                    worker.send((fn, calls[index], kwargs or {}))
                except (BrokenPipeError, OSError):  # it died while idle: replace it and send again
                    worker = self._replace(worker)
                    worker.send((fn, calls[index], kwargs or {}))
                busy[index] = (worker, time.monotonic() + timeout)
            next_deadline = min(deadline for _, deadline in busy.values())
            ready = _readable([w for w, _ in busy.values()], max(0.0, next_deadline - time.monotonic()))
            now = time.monotonic()
            for index, (worker, deadline) in list(busy.items()):
                if worker in ready:
                    try:
                        results[index] = worker.recv()
                    except (EOFError, OSError):  # the child died (e.g. killed by the OOM killer)
                        results[index] = ("died", None)
                        worker = self._replace(worker)
                elif now >= deadline:
                    results[index] = ("timeout", None)
                    worker = self._replace(worker)
                else:
                    continue
                del busy[index]
                idle.append(worker)
        return [r if r is not None else ("error", "no result") for r in results]

    def _replace(self, worker: _Worker) -> _Worker:
        worker.kill()
        fresh = _Worker(self.preload)
        fresh.wait_ready()
        self.workers = [fresh if w is worker else w for w in self.workers]
        return fresh

    def close(self) -> None:
        with self.lock:
            self._close()

    def _close(self) -> None:
        if self.pid == os.getpid():
            for worker in self.workers:
                worker.kill()
        self.workers = []


def _readable(workers: list[_Worker], timeout: float) -> list[_Worker]:
    with selectors.DefaultSelector() as selector:
        for worker in workers:
            selector.register(worker, selectors.EVENT_READ)
        return [key.fileobj for key, _ in selector.select(timeout)]


_POOL: TimeLimitedPool | None = None
_POOL_CREATION = threading.Lock()


def shared_pool() -> TimeLimitedPool:
    """The process-wide pool (created on first use, closed at exit)."""
    global _POOL
    with _POOL_CREATION:
        if _POOL is None:
            _POOL = TimeLimitedPool(workers=min(4, os.cpu_count() or 1))
            atexit.register(_POOL.close)
    return _POOL


def call_with_deadline(
    name: str, fn: Callable, calls: list[tuple], timeout: float, kwargs: dict | None = None
) -> list[Any]:
    """``fn(*args)`` for each call in the shared pool; a call past ``timeout`` seconds (or whose worker
    died) gives ``None`` and counts one against ``name``. Errors raise, naming ``name`` and the arguments."""
    values = []
    for args, (status, value) in zip(calls, shared_pool().map(fn, calls, timeout, kwargs), strict=True):
        if status in ("timeout", "died"):  # past the deadline, or killed (e.g. out of memory) before it
            record_reward_event(f"reward_timeouts/{name}")
            what = f"timed out after {timeout:.1f}s" if status == "timeout" else "died in its worker process"
            log.warning("reward %r %s (scored 0): %.200r", name, what, args)
            values.append(None)
        elif status == "error":
            raise RuntimeError(f"reward {name!r} raised {value} on arguments {str(args)[:300]!r}")
        else:
            values.append(value)
    return values


class TimeLimitedReward:
    """A reward function run in a child process with a deadline per call (``timeout`` in a reward spec).

    On timeout, every completion of that call scores 0 and the timeout is counted. The function must be
    picklable: a module-level function, optionally with ``functools.partial`` arguments.
    """

    def __init__(self, name: str, fn: Callable, timeout: float) -> None:
        if timeout <= 0:
            raise ValueError(f"reward {name!r}: `timeout` must be > 0 seconds, got {timeout}")
        self.name, self.fn, self.timeout = name, fn, timeout
        module = getattr(getattr(fn, "func", fn), "__module__", None)
        if module and module != "__main__":
            shared_pool().add_preload(module)

    def __call__(self, completions: list, **columns: Any) -> list:
        (scores,) = call_with_deadline(self.name, _call_reward, [(self.fn, completions, columns)], self.timeout)
        return [0.0] * len(completions) if scores is None else scores


def _call_reward(fn: Callable, completions: list, columns: dict) -> list:
    return list(fn(completions=completions, **columns))
