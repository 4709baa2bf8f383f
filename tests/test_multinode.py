"""Multi-node launch as README.md gives it: its torchrun line run as two one-process "nodes" on localhost
(gloo) against a one-node two-process DDP run, and its SLURM lines against Lightning's SLURM environment."""

import json
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.ddp_probe import probe_args

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def readme_line(prefix: str) -> str:
    """The README line that starts with ``prefix`` (inside a code block), exactly one."""
    lines = [line.strip() for line in README.splitlines() if line.strip().startswith(prefix)]
    assert len(lines) == 1, f"README.md should have one line starting with {prefix!r}, has {len(lines)}"
    return lines[0]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict[str, str]:
    tests = str(ROOT / "tests")
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }


def _weights(probe: Path) -> list[list[str]]:
    return [[step["weights"] for step in json.loads((probe / f"rank{r}.json").read_text())] for r in (0, 1)]


@pytest.mark.slow
def test_readme_torchrun_two_nodes_on_localhost_match_one_node_ddp(tmp_path):
    line = readme_line("torchrun --nnodes 2")
    port = _free_port()
    line = line.replace("$GPUS", "1").replace("$HEAD:29500", f"127.0.0.1:{port}").replace("$JOB", "r1-test")
    assert "$" not in line, line
    argv = shlex.split(line)
    argv = [sys.executable, "-m", "torch.distributed.run", *argv[1:]]  # torchrun, from this interpreter
    argv = [a if not a.startswith("configs/") else str(ROOT / a) for a in argv]
    nodes_dir, probe = tmp_path / "nodes", tmp_path / "nodes" / "probe"
    nodes_dir.mkdir()
    command = [*argv, *probe_args(nodes_dir, probe)]
    # the same command on each "node"; c10d rendezvous gives them node ranks 0 and 1
    nodes = [
        subprocess.Popen(command, cwd=nodes_dir, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [node.communicate(timeout=600) for node in nodes]
    for node, (_, err) in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, err[-4000:]

    ddp_dir, ddp_probe = tmp_path / "ddp", tmp_path / "ddp" / "probe"
    ddp_dir.mkdir()
    one_node = [
        sys.executable,
        "-m",
        "r1_lightning.cli",
        "fit",
        "--config",
        str(ROOT / "configs/r1_zero_tiny.yaml"),
    ]
    one_node += ["--config", str(ROOT / "configs/strategy/ddp.yaml"), "--trainer.devices", "2"]
    result = subprocess.run(
        [*one_node, *probe_args(ddp_dir, ddp_probe)],
        cwd=ddp_dir,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]

    two_nodes, one = _weights(probe), _weights(ddp_probe)
    assert two_nodes[0] == two_nodes[1]  # the nodes agree after every step
    assert two_nodes == one  # and step for step they hold the one-node run's weights
    assert len(one[0]) == 2 and one[0][0] != one[0][1]


def _sbatch() -> tuple[dict[str, int], list[str]]:
    header = readme_line("#SBATCH")
    options = dict(re.findall(r"--([\w-]+)=(\d+)", header))
    srun = shlex.split(readme_line("srun r1-lightning fit"))
    return {k: int(v) for k, v in options.items()}, srun[2:]  # after "srun r1-lightning"


def _srun_environment(monkeypatch, nodes: int, tasks_per_node: int, node: int, local: int) -> None:
    """The variables srun sets for one task (the ones Lightning reads)."""
    for key in [k for k in os.environ if k.startswith(("SLURM_", "TORCHELASTIC_"))] + ["LOCAL_RANK", "RANK"]:
        monkeypatch.delenv(key, raising=False)
    values = {
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "r1",
        "SLURM_NNODES": nodes,
        "SLURM_NTASKS": nodes * tasks_per_node,
        "SLURM_NTASKS_PER_NODE": tasks_per_node,
        "SLURM_NODEID": node,
        "SLURM_PROCID": node * tasks_per_node + local,
        "SLURM_LOCALID": local,
        "SLURM_NODELIST": "gpu[01-02]",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, str(value))


def test_readme_slurm_lines_give_every_task_its_rank(monkeypatch, tmp_path):
    from lightning.fabric.plugins.environments import SLURMEnvironment

    from r1_lightning.runs.lightning_cli import run_lightning_cli

    # Lightning writes MASTER_ADDR / NODE_RANK / ... into os.environ while it sets up: keep them in this
    # test (a later test's subprocesses would otherwise inherit MASTER_ADDR=gpu01 and wait for it)
    monkeypatch.setattr(os, "environ", dict(os.environ))
    options, args = _sbatch()
    assert args[0] == "fit"
    nodes, per_node = options["nodes"], options["ntasks-per-node"]
    assert options["gpus-per-node"] == per_node  # one task per GPU
    args = [a if not a.startswith("configs/") else str(ROOT / a) for a in args[1:]]
    args += ["--trainer.accelerator", "cpu", "--model.init_args.model", "tiny:random"]
    args += ["--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path)]
    _srun_environment(monkeypatch, nodes, per_node, node=1, local=3)
    trainer = run_lightning_cli(args, run=False).trainer
    environment = trainer.strategy.cluster_environment
    assert isinstance(environment, SLURMEnvironment)
    assert (trainer.num_nodes, trainer.num_devices, trainer.world_size) == (nodes, per_node, nodes * per_node)
    assert (trainer.node_rank, trainer.local_rank, trainer.global_rank) == (1, 3, per_node + 3)
    assert environment.main_address == "gpu01"  # the first node of the allocation
    # the check Lightning's launcher runs before it starts: the script and the command line agree
    environment.validate_settings(num_devices=trainer.num_devices, num_nodes=trainer.num_nodes)

    # a script whose --ntasks-per-node disagrees with --trainer.devices is stopped by that check
    _srun_environment(monkeypatch, nodes, per_node // 2, node=0, local=0)
    trainer = run_lightning_cli(args, run=False).trainer
    with pytest.raises(ValueError, match="ntasks-per-node"):
        trainer.strategy.cluster_environment.validate_settings(trainer.num_devices, trainer.num_nodes)
