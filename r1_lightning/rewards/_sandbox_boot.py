"""The first code a sandboxed child runs (``python -I -S -B -c <this file's text>``); see ``sandbox.py``.

Order matters: read the job from stdin, lower the resource limits (soft = hard, so the untrusted code
cannot raise them back), drop root to ``nobody``, install the audit hook, and only then execute the
model's code and the tests. It imports nothing outside the standard library.
"""

import io
import json
import os
import resource
import sys


def _limit(kind, value):
    resource.setrlimit(kind, (value, value))


def _drop_root(root):
    if os.geteuid() != 0:
        return
    try:
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)  # nobody: the OS itself now refuses the user's files and processes
    except OSError:
        pass  # inside a user namespace only our own uid is mapped; the audit hook still applies


def _install_guard(root, readable):
    root = os.path.realpath(root)
    readable = tuple(os.path.realpath(p) for p in readable if p)
    blocked_modules = {"ctypes", "_ctypes", "_posixsubprocess", "multiprocessing", "_multiprocessing", "pty"}
    blocked_events = {
        "os.system",
        "os.exec",
        "os.posix_spawn",
        "os.spawn",
        "os.fork",
        "os.forkpty",
        "os.kill",
        "os.killpg",
        "signal.pthread_kill",
        "subprocess.Popen",
        "os.startfile",
        "resource.setrlimit",
        "resource.prlimit",
        "sys.addaudithook",
        "os.chroot",
        "sys.remote_exec",
        "os.putenv",
        "os.unsetenv",
        "webbrowser.open",
    }
    path_events = {  # event -> index of the path argument; writes/changes allowed under root only
        "os.remove": 0,
        "os.rmdir": 0,
        "os.rename": 0,
        "os.mkdir": 0,
        "os.symlink": 0,
        "os.link": 0,
        "os.chmod": 0,
        "os.chown": 0,
        "os.truncate": 0,
        "os.utime": 0,
        "shutil.rmtree": 0,
        "os.chdir": 0,
        "os.listdir": 0,
        "os.scandir": 0,
        "os.listxattr": 0,
        "os.getxattr": 0,
    }

    def inside(path, places):
        if isinstance(path, int):
            return True  # an already-open descriptor (stdin/stdout/stderr)
        try:
            real = os.path.realpath(os.fsdecode(path))
        except (TypeError, ValueError):
            return False
        return any(real == p or real.startswith(p + os.sep) for p in places)

    def guard(event, args):
        if event in blocked_events or event.startswith(("socket.", "ctypes.", "_ctypes.")):
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "import" and args[0].split(".")[0] in blocked_modules:
            raise PermissionError(f"sandbox: importing {args[0]} is not allowed")
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND)
            )
            if not inside(path, (root,) if writing else (root, *readable)):
                raise PermissionError(f"sandbox: opening {path!r} is not allowed")
        elif event in path_events:
            path = args[path_events[event]] if args else None
            if path is not None and not inside(
                path, (root, *readable) if event.endswith(("listdir", "scandir")) else (root,)
            ):
                raise PermissionError(f"sandbox: {event} on {path!r} is not allowed")

    sys.addaudithook(guard)


def _run(job, results):
    namespace = {"__name__": "__sandbox__", "__builtins__": __builtins__}
    passed = 0
    try:
        exec(compile(job["code"], "<completion>", "exec"), namespace)
        if job.get("setup"):
            exec(compile(job["setup"], "<test setup>", "exec"), namespace)
    except BaseException as err:  # SystemExit too: the program may not end the run
        results.write(f"program: {type(err).__name__}: {err}"[:500] + "\n")
        return 0
    for test in job["tests"]:
        try:
            exec(compile(test, "<test>", "exec"), namespace)
            passed += 1
        except BaseException as err:
            results.write(f"test: {type(err).__name__}: {err}"[:500] + "\n")
    return passed


# Imported before the privilege drop: as ``nobody`` the interpreter's own files may be unreadable
# (e.g. a Python under /root). What the code imports beyond these must be readable by nobody.
PRELOADED = (
    "math cmath collections itertools functools heapq bisect re string fractions decimal statistics random "
    "operator typing dataclasses copy json datetime time array enum textwrap unicodedata numbers struct "
    "socket signal subprocess"  # loaded so the audit hook, not a missing file, is what refuses them
).split()


def main():
    job = json.loads(sys.stdin.read())
    for name in PRELOADED:
        __import__(name)
    limits = job["limits"]
    _limit(resource.RLIMIT_CPU, limits["cpu_seconds"])
    _limit(resource.RLIMIT_AS, limits["memory_mb"] * 2**20)
    _limit(resource.RLIMIT_FSIZE, limits["max_file_bytes"])
    _limit(resource.RLIMIT_NOFILE, 64)
    _limit(resource.RLIMIT_CORE, 0)
    os.chdir(job["root"])
    _drop_root(job["root"])
    _limit(resource.RLIMIT_NPROC, limits["max_processes"])
    nonce, job["nonce"] = job["nonce"], None
    report = os.dup(1)  # the verdict goes here; the program's own prints go to a bounded buffer
    sys.stdout = sys.stderr = io.StringIO()
    _install_guard(job["root"], [p for p in sys.path if p])  # with -I -S: the standard library only
    messages = io.StringIO()
    passed = _run(job, messages)
    os.write(report, f"{nonce} {passed} {len(job['tests'])}\n{messages.getvalue()[-2000:]}".encode())
    os._exit(0)


if __name__ == "__main__":  # run by ``python -c``; importing it (e.g. doctest collection) does nothing
    main()
