"""Data parallelism on CPU: two gloo processes, whole groups per rank, identical weights after each step."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
        "r1_lightning.cli",
        "fit",
        "--config",
        str(ROOT / "configs" / "r1_zero_tiny.yaml"),
        "--config",
        str(ROOT / "configs" / "strategy" / "ddp.yaml"),
        "--trainer.accelerator",
        "cpu",
        "--trainer.max_steps",
        "2",
        "--trainer.val_check_interval",
        "null",
        "--trainer.limit_val_batches",
        "0",
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.logger.init_args.save_dir",
        str(tmp_path),
        "--trainer.callbacks+=helpers.ddp_probe.RankProbe",
        f"--trainer.callbacks.out_dir={probe}",
        "--model.init_args.model",
        "tiny:random",
        "--model.init_args.validate_at_start",
        "false",
        "--model.init_args.export_dir",
        str(tmp_path / "hf"),
        "--model.init_args.loss_type",
        "token",
        "--model.init_args.micro_batch_tokens",
        "400",
        "--model.init_args.rewards",
        "{helpers.rewards.varied_reward: 1.0}",
        "--data.init_args.batch_size",
        "4",
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
