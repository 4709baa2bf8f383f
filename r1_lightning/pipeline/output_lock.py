"""One pipeline run per output folder (an ``flock`` the kernel releases when its holder dies)."""

from __future__ import annotations

from pathlib import Path

from r1_lightning.errors import ConfigError


class OutputDirLock:
    """One pipeline per ``output_dir``: a second run on the same folder is refused, naming the PID of
    the run that holds it. The lock is an ``flock`` on ``<output_dir>/pipeline.lock``, which the kernel
    releases when its process dies, so a killed run's lock is taken over by the next one. (Where
    ``fcntl`` is missing, i.e. on Windows, runs are not locked.)"""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / "pipeline.lock"
        self.handle = None

    def __enter__(self) -> OutputDirLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return self
        import os

        self.handle = open(self.path, "a+")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.seek(0)
            holder = self.handle.read().strip() or "unknown"
            self.handle.close()
            raise ConfigError(
                f"another pipeline (PID {holder}) is running in {self.path.parent}; wait for it to "
                "finish, or pass --output_dir for a separate run"
            ) from None
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(str(os.getpid()))
        self.handle.flush()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            self.handle.close()  # closing releases the flock
