"""What clusters do to runs, on the shipped default config run as a user runs it (from a working
directory, with `--ckpt_path last`): SIGKILL, SIGTERM, a truncated checkpoint. Only `max_steps`, the
model (a random-init one: no base pretraining in CI) and the reward are overridden on the command line."""

import csv
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import NO_EVAL
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "r1_zero_tiny.yaml")
RUN = Path("runs") / "r1_zero_tiny"
ARGS = [
    "fit",
    "--config",
    TINY,
    "--model.init_args.model",
    "tiny:random",
    "--trainer.max_steps",
    "30",
    "--model.init_args.val_num_samples",
    "1",
    "--trainer.enable_progress_bar",
    "false",
    "--model.init_args.rewards",
    "{helpers.rewards.varied_reward: 1.0, accuracy_reward: 1.0}",
]
TIMING = ("seconds", "per_s", "train/time/")  # wall-clock columns differ between any two runs


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "r1_lightning.cli", *args]


def _start(cwd: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        _command(*ARGS, *extra), cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_for(predicate, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as handle:
        return [{k: v for k, v in row.items() if not any(t in k for t in TIMING)} for row in csv.DictReader(handle)]


def _logged_steps(run_dir: Path) -> set[int]:
    path = run_dir / "metrics.csv"
    if not path.exists():
        return set()
    with path.open() as handle:
        return {int(row["step"]) for row in csv.DictReader(handle) if row.get("train/reward")}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("uninterrupted")
    result = subprocess.run(_command(*ARGS), cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd / RUN / "version_0"


def _assert_same_run(resumed: Path, uninterrupted: Path) -> None:
    assert _rows(resumed) == _rows(uninterrupted)  # every logged value, validation included, bitwise
    a, b = (
        load_file(uninterrupted / "hf_model" / "model.safetensors"),
        load_file(resumed / "hf_model" / "model.safetensors"),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_sigkill_then_ckpt_path_last_continues_the_run(tmp_path, uninterrupted):
    run = _start(tmp_path)
    checkpoint = tmp_path / RUN / "version_0" / "checkpoints" / "step-step=20.ckpt"
    _wait_for(checkpoint.exists, run)
    run.send_signal(signal.SIGKILL)
    run.wait()
    resumed = subprocess.run(
        _command(*ARGS, "--ckpt_path", "last"), cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from runs/r1_zero_tiny/version_0/checkpoints/" in resumed.stderr
    assert [p.name for p in (tmp_path / RUN).iterdir()] == ["version_0"]  # the same run, no new version
    _assert_same_run(tmp_path / RUN / "version_0", uninterrupted)


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_and_prints_the_resume_command(tmp_path, uninterrupted):
    run = _start(tmp_path)
    version = tmp_path / RUN / "version_0"
    _wait_for(lambda: 10 in _logged_steps(version), run)  # metrics reach the disk at every logging step
    run.send_signal(signal.SIGTERM)
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    step = torch.load(version / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    assert 10 <= step < 30 and f"checkpoint of step {step}" in stderr
    (command,) = [line.split("resume with: ", 1)[1] for line in stderr.splitlines() if "resume with: " in line]
    argv = shlex.split(command)
    assert argv[0] == "r1-lightning" and argv[-2:] == ["--ckpt_path", "last"]
    resumed = subprocess.run(_command(*argv[1:]), cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"(step {step})" in resumed.stderr
    _assert_same_run(version, uninterrupted)


def test_last_skips_a_truncated_checkpoint_and_an_explicit_one_is_named(tmp_path, capsys):
    from r1_lightning.cli.main import main
    from r1_lightning.errors import ConfigError
    from r1_lightning.runs.checkpoints import checkpoint_problem, newest_intact_checkpoint

    folder = tmp_path / RUN / "version_0" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save({"global_step": 20, "state_dict": {}}, folder / "step-step=20.ckpt")
    whole = (folder / "step-step=20.ckpt").read_bytes()
    (folder / "last.ckpt").write_bytes(whole[: len(whole) // 2])  # cut short by a kill or a full disk
    (folder / "step-step=40.ckpt").write_bytes(b"")
    (folder / "garbage.ckpt").write_bytes(b"not a checkpoint at all")
    assert "empty" in checkpoint_problem(folder / "step-step=40.ckpt")
    assert "truncated" in checkpoint_problem(folder / "last.ckpt")
    assert "not a PyTorch checkpoint" in checkpoint_problem(folder / "garbage.ckpt")
    assert newest_intact_checkpoint(folder) == folder / "step-step=20.ckpt"
    for name, problem in [("last.ckpt", "truncated"), ("step-step=40.ckpt", "empty")]:
        with pytest.raises(ConfigError, match=problem) as error:
            main([*ARGS, "--ckpt_path", str(folder / name)])
        assert str(folder / name) in str(error.value)


def test_ckpt_path_last_without_a_checkpoint_starts_fresh(tmp_path, monkeypatch, capsys):
    from r1_lightning.cli.main import main

    monkeypatch.chdir(tmp_path)
    cli = main(
        [
            *ARGS[:-2],
            "--trainer.max_steps",
            "1",
            *NO_EVAL,
            "--ckpt_path",
            "last",
        ]
    )
    assert cli.trainer.global_step == 1
    assert "no intact checkpoint" in capsys.readouterr().err


def test_a_full_disk_keeps_earlier_checkpoints_and_names_the_file(tmp_path, monkeypatch):
    import errno

    from r1_lightning.runs.checkpoints import AtomicCheckpointIO, CheckpointWriteError

    io = AtomicCheckpointIO()
    target = tmp_path / "checkpoints" / "step-step=2.ckpt"
    io.save_checkpoint({"global_step": 2, "weights": torch.ones(1000)}, target)
    real_save = torch.save

    def half_then_full(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04" + b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", half_then_full)
    with pytest.raises(CheckpointWriteError, match="disk is full") as error:
        io.save_checkpoint({"global_step": 4}, tmp_path / "checkpoints" / "step-step=4.ckpt")
    with pytest.raises(CheckpointWriteError, match="disk is full"):
        io.save_checkpoint({"global_step": 4}, target)  # over an existing checkpoint
    monkeypatch.setattr(torch, "save", real_save)
    assert "step-step=4.ckpt" in str(error.value) and "intact" in str(error.value)
    assert [p.name for p in target.parent.iterdir()] == ["step-step=2.ckpt"]  # no partial file anywhere
    assert torch.load(target, weights_only=False)["global_step"] == 2


def test_two_pipelines_on_one_folder_do_not_interleave(tmp_path):
    from r1_lightning.errors import ConfigError
    from r1_lightning.pipeline.output_lock import OutputDirLock

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time; from pathlib import Path\n"
                "from r1_lightning.pipeline.output_lock import OutputDirLock\n"
                f"with OutputDirLock(Path({str(tmp_path)!r})):\n    print('locked', flush=True); time.sleep(60)"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    try:
        with pytest.raises(ConfigError, match=f"PID {holder.pid}"):
            with OutputDirLock(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    with OutputDirLock(tmp_path):  # the dead holder's lock is taken over
        assert (tmp_path / "pipeline.lock").read_text() == str(os.getpid())
