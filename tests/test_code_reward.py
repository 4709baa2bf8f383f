"""The sandboxed code reward: right programs pass, hostile ones score 0 and nothing escapes."""

import os
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from r1_lightning.rewards.code import code_reward, extract_code
from r1_lightning.rewards.limits import count_reward_events
from r1_lightning.rewards.sandbox import SandboxLimits, network_isolation, run_untrusted

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(wall_seconds=3.0, cpu_seconds=2)


def _fenced(code: str) -> str:
    return f"<think>let me write it</think><answer>\n```python\n{code}\n```\n</answer>"


def test_correct_and_wrong_programs():
    tests = ["assert square(3) == 9", "assert square(2) == 4"]
    completions = [_fenced("def square(x):\n    return x * x"), _fenced("def square(x):\n    return 2 * x"), "no code"]
    assert code_reward(completions, tests=[tests] * 3, **FAST) == [1.0, 0.0, 0.0]
    assert code_reward(completions[1:2], tests=[tests], partial_credit=True, **FAST) == [0.5]
    # Tests as one string, one assert per line; a record without tests is not applicable.
    assert code_reward(completions[:2], tests=["assert square(3) == 9\nassert square(1) == 1", None], **FAST) == [
        1.0,
        None,
    ]


def test_bad_tests_column_is_a_clear_error():
    with pytest.raises(ValueError, match="`tests` column of record 0"):
        code_reward([_fenced("x = 1")], tests=[{"input": 1}])


def test_code_is_taken_from_the_answer_not_the_thinking():
    text = "<think>```python\nimport os\n```</think>```python\ndef f():\n    return 1\n```"
    assert extract_code(text) == "def f():\n    return 1\n"


@pytest.fixture
def secret_file(tmp_path):
    path = tmp_path / "secret.txt"
    path.write_text("the user's private data")
    path.chmod(0o600)
    return path


@pytest.fixture
def listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    connected = []

    def accept():
        server.settimeout(8)
        try:
            connected.append(server.accept())
        except OSError:
            pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], connected
    server.close()


def test_hostile_programs_score_zero_and_nothing_escapes(secret_file, listener, tmp_path):
    port, connected = listener
    outside = tmp_path / "written_from_the_sandbox.txt"
    hostile = {
        "infinite loop": "while True:\n    pass",
        "sleep past the wall time": "import time\ntime.sleep(60)",
        "fork bomb": "import os\nwhile True:\n    os.fork()",
        "memory bomb": "x = []\nwhile True:\n    x.append(' ' * 10**7)",
        "read outside its directory": f"data = open({str(secret_file)!r}).read()",
        "list the user's files": f"import os\nnames = os.listdir({str(secret_file.parent)!r})",
        "write outside its directory": f"open({str(outside)!r}, 'w').write('x')",
        "open a socket": f"import socket\ns = socket.socket()\ns.connect(('127.0.0.1', {port}))",
        "kill its parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
        "kill every process": "import os, signal\nos.kill(-1, signal.SIGKILL)",
        "start a shell": "import subprocess\nsubprocess.run(['sh', '-c', 'echo pwned > /tmp/pwned'])",
        "load ctypes": "import ctypes\nctypes.CDLL(None).kill(os.getppid(), 9)",
        "raise its limits": "import resource\nresource.setrlimit(resource.RLIMIT_CPU, (100, 100))",
        "exit early": "import sys\nsys.exit(0)",
    }
    # Each program would pass the test if it got through; so a 0 means it was stopped.
    completions = [_fenced(code + "\ndef f():\n    return 1") for code in hostile.values()]
    started = time.monotonic()
    with count_reward_events() as events:
        scores = code_reward(completions, tests=[["assert f() == 1"]] * len(completions), workers=2, **FAST)
    elapsed = time.monotonic() - started
    assert dict(zip(hostile, scores, strict=True)) == dict.fromkeys(hostile, 0.0)
    assert elapsed < 60  # bounded by the wall-time limit, two at a time
    assert not outside.exists() and not Path("/tmp/pwned").exists()
    assert not connected, "the sandbox reached a socket on the host"
    assert secret_file.read_text() == "the user's private data"
    assert events["code_runs/timeout"] >= 1
    # We are still alive (the "kill its parent" program targeted this process) and no child is left.
    # (other children, e.g. the reward-deadline worker pool, are not sandboxes: only those are checked)
    assert not [
        p
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and _parent(p) == os.getpid() and "-I\x00-S\x00-B" in _cmdline(p)
    ]


def _parent(proc: Path) -> int:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_text()
    except OSError:
        return ""


def test_limits_and_verdict_details():
    looping = run_untrusted(
        "while True:\n    pass", ["assert True"], limits=SandboxLimits(wall_seconds=10, cpu_seconds=1)
    )
    assert looping.status == "crashed" and "SIGKILL" in looping.detail  # the CPU limit, before the wall time
    blocked = run_untrusted("import socket\nsocket.socket()", ["assert True"])
    assert blocked.status == "ok" and blocked.passed == 0 and "socket" in blocked.detail
    assert run_untrusted("import math\ndef f():\n    return math.sqrt(16)", ["assert f() == 4"]).passed == 1


def test_network_namespace_is_used_where_the_machine_allows_it():
    prefix = network_isolation()
    assert prefix == () or prefix[0] == "unshare"


def test_training_goes_on_when_the_code_reward_meets_hostile_programs(tmp_path):
    from r1_lightning.cli.main import main

    sys.path.insert(0, str(ROOT / "tests"))
    try:
        cli = main(
            [
                "fit",
                "--config",
                str(ROOT / "configs" / "r1_zero_tiny.yaml"),
                "--model.init_args.model",
                "tiny:random",
                "--trainer.fast_dev_run",
                "2",
                "--trainer.default_root_dir",
                str(tmp_path),
                "--trainer.logger.init_args.save_dir",
                str(tmp_path),
                "--model.init_args.export_dir",
                str(tmp_path / "hf"),
                "--model.init_args.rewards",
                '{"helpers.reward_probes.hostile_code_reward": 1.0, "format_reward": 0.5}',
                "--model.init_args.num_generations",
                "4",
                "--data.init_args.batch_size",
                "2",
            ]
        )
    finally:
        sys.path.remove(str(ROOT / "tests"))
    assert cli.trainer.global_step == 2
