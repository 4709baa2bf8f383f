"""Running model-written Python against test cases in a separate, limited process.

Threat model: the code is untrusted (a policy under RL will try anything that raises its reward, and
may emit destructive code by accident). Each run gets:

- a fresh interpreter (``python -I -S -B``: no site-packages, no user paths, only the standard
  library), in its own session, so the whole process group is killed at the wall-time deadline;
- ``setrlimit`` limits set before the code runs, soft = hard so they cannot be raised back: CPU
  seconds, address space (memory), file size, open files, processes;
- a throwaway working directory (removed afterwards), ``HOME``/``TMPDIR`` pointing into it, and an
  environment with nothing of the trainer's;
- no network: a new network namespace (``unshare --net``, only a loopback that is down) where the
  machine allows it, and in every case an audit hook (PEP 578) that refuses sockets;
- the audit hook also refuses: starting processes (``fork``, ``exec``, ``subprocess``, ``os.system``),
  sending signals (so the trainer cannot be killed), ``ctypes``, changing limits, opening files for
  writing outside the working directory or for reading outside it and the standard library, and
  listing, removing or renaming anything outside it;
- when the trainer runs as root, the child drops to user ``nobody`` before the code runs, so the
  operating system itself refuses the user's files and processes.

Limits (what this does not promise): an audit hook is not a security boundary against code that
finds a way around the interpreter (a bug in CPython or the standard library); without user
namespaces and not as root, there is no network namespace and no privilege drop, so the audit hook is
the only wall. Code that inspects the test harness from inside the same interpreter can forge its own
verdict (reward hacking, not escape). For hostile workloads at scale, run the trainer itself in a
container or VM (gVisor, Firecracker) and keep this as the inner layer.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

BOOTSTRAP = (Path(__file__).parent / "_sandbox_boot.py").read_text()


@dataclass(frozen=True)
class SandboxLimits:
    """Resources one run may use.

    Args:
        wall_seconds: the process group is killed after this long.
        cpu_seconds: CPU-time limit (RLIMIT_CPU).
        memory_mb: address-space limit (RLIMIT_AS); Python itself needs ~30 MB.
        max_file_bytes: largest file the code may write (RLIMIT_FSIZE).
        max_processes: RLIMIT_NPROC for the unprivileged user (a second wall behind the audit hook).
    """

    wall_seconds: float = 5.0
    cpu_seconds: int = 3
    memory_mb: int = 256
    max_file_bytes: int = 1_000_000
    max_processes: int = 64


@dataclass(frozen=True)
class SandboxResult:
    passed: int  # tests that ran without an exception
    total: int
    status: str  # "ok" | "timeout" | "crashed" (killed by a limit, or no verdict)
    detail: str  # the last messages: failed assertions, the program's error, or why it was killed


@functools.lru_cache(maxsize=1)
def network_isolation() -> tuple[str, ...]:
    """The command prefix that puts a child in a new network namespace here, or () when none works."""
    for prefix in (("unshare", "--net", "--"), ("unshare", "--user", "--map-root-user", "--net", "--")):
        try:
            if subprocess.run([*prefix, "true"], capture_output=True, timeout=10).returncode == 0:
                return prefix
        except (OSError, subprocess.TimeoutExpired):
            continue
    return ()


def run_untrusted(
    code: str, tests: list[str], setup: str = "", limits: SandboxLimits = SandboxLimits()
) -> SandboxResult:
    """Run ``code``, then ``setup``, then each test (a statement, e.g. ``assert f(2) == 4``) in one sandboxed
    child; a test passes when it raises nothing."""
    root = tempfile.mkdtemp(prefix="r1-sandbox-")
    nonce = secrets.token_hex(16)
    try:
        if os.geteuid() == 0:
            os.chown(root, 65534, 65534)  # the child runs as nobody: it must own its directory
        job = {
            "code": code,
            "tests": list(tests),
            "setup": setup,
            "root": root,
            "nonce": nonce,
            "limits": asdict(limits),
        }
        env = {"PATH": "/usr/bin:/bin", "HOME": root, "TMPDIR": root, "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}
        command = [*network_isolation(), sys.executable, "-I", "-S", "-B", "-c", BOOTSTRAP]
        with open(os.path.join(root, ".verdict"), "w+b") as verdict:
            process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=verdict,
                stderr=subprocess.DEVNULL,
                cwd=root,
                env=env,
                start_new_session=True,
                close_fds=True,
            )
            try:
                process.communicate(json.dumps(job).encode(), timeout=limits.wall_seconds)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_group(process)
            verdict.seek(0)
            output = verdict.read(16_000).decode(errors="replace")
        if timed_out:
            return SandboxResult(0, len(tests), "timeout", f"killed after {limits.wall_seconds}s wall time")
        first, _, detail = output.partition("\n")
        parts = first.split()
        if len(parts) != 3 or parts[0] != nonce:
            reason = f"exit status {process.returncode}" + (
                f" ({signal.Signals(-process.returncode).name})" if process.returncode < 0 else ""
            )
            return SandboxResult(0, len(tests), "crashed", f"no verdict: {reason}")
        return SandboxResult(int(parts[1]), int(parts[2]), "ok", detail.strip())
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _kill_group(process: subprocess.Popen) -> None:
    """Kill the child's whole session (anything it started too) and reap it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


def run_many(jobs: list[tuple[str, list[str], str]], limits: SandboxLimits, workers: int) -> list[SandboxResult]:
    """``run_untrusted`` for many ``(code, tests, setup)`` jobs, ``workers`` at a time."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda job: run_untrusted(*job, limits=limits), jobs))
