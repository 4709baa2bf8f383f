"""Data parallelism on CPU: two gloo processes, whole groups per rank, identical weights after each step."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.ddp_probe import probe_args

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_two_process_ddp_keeps_ranks_identical(tmp_path):
    probe = tmp_path / "probe"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    command = [
        sys.executable,
        "-m",
        "r1_lightning.cli.main",
        "fit",
        "--config",
        str(ROOT / "configs" / "r1_zero_tiny.yaml"),
        "--config",
        str(ROOT / "configs" / "strategy" / "ddp.yaml"),
        *probe_args(tmp_path, probe),
    ]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 2
    for step0, step1 in zip(*ranks, strict=True):
        # both ranks end every optimizer step with bit-identical weights
        assert step0["weights"] == step1["weights"]
        # each rank drew its own prompts (the stream is sharded) ...
        assert not set(step0["prompts"]) & set(step1["prompts"])
        # ... and sampled whole groups for them: G completions each, advantages summing to 0 per group
        for step in (step0, step1):
            assert step["num_completions"] == 4 * step["group_size"]
            assert all(abs(s) < 1e-4 for s in step["group_advantage_sums"])
    assert ranks[0][0]["weights"] != ranks[0][1]["weights"]  # and training moved them
