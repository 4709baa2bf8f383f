"""Data parallelism on CPU: two gloo processes, whole groups per rank, identical weights after each step."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.ddp_probe import probe_args
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]


def _run_probed(command: list[str], tmp_path: Path, probe: Path, env: dict, says: str = "") -> list[list[dict]]:
    """Run a 2-rank command; each rank's probe record (2 steps each). ``says``: a line the run must log."""
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert says in result.stdout + result.stderr
    ranks = [json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 2
    return ranks


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
    # the head's gradient computed in the forward (fused with the loss) reaches DDP's all-reduce: were it
    # written around autograd's accumulator, the ranks' weights would drift apart below
    ranks = _run_probed(command, tmp_path, probe, env, says="fused head+loss: on")
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
    # each rank samples from its own random stream (seeded from the seed and its rank)
    assert all(s0["rng"] != s1["rng"] for s0, s1 in zip(*ranks, strict=True))


TIMING = ("time/", "seconds", "per_s")


@pytest.mark.slow
@pytest.mark.parametrize(
    "settings", [{}, {"max_staleness": 1}, {"tools": ["helpers.tools.add"]}], ids=["synchronous", "async-k1", "tools"]
)
def test_a_two_rank_run_killed_and_resumed_logs_what_an_uninterrupted_one_logs(tmp_path, settings):
    """The shipped default on 2 CPU ranks (gloo), as users launch it: SIGKILL on both ranks after step 4,
    ``--ckpt_path last``, and every non-timing metric of every step equals the uninterrupted run's, and
    so do the final weights. With ``max_staleness: 1`` each rank's in-flight rollout is in the checkpoint."""
    from helpers import ROOT as REPO
    from test_resume import _config, _metrics

    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    ddp = ["--config", str(REPO / "configs" / "strategy" / "ddp.yaml"), "--trainer.log_every_n_steps", "1"]

    def fit(config, *extra):
        command = [sys.executable, "-m", "r1_lightning.cli", "fit", "--config", str(config), *ddp, *extra]
        return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)

    straight = fit(_config(tmp_path, "straight", [], **settings))
    assert straight.returncode == 0, straight.stderr[-3000:]
    marker = str(tmp_path / "killed")
    killer = {"class_path": "helpers.pipeline_probe.KillAllRanksAtStep", "init_args": {"step": 4, "marker": marker}}
    crashed_config = _config(tmp_path, "crashed", [killer], **settings)
    crashed = fit(crashed_config)
    assert crashed.returncode != 0 and (tmp_path / "killed.rank0").exists() and (tmp_path / "killed.rank1").exists()
    resumed = fit(crashed_config, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    before, after = _metrics(tmp_path / "straight"), _metrics(tmp_path / "crashed")
    assert sorted(before) == sorted(after)
    compared = 0
    for step, row in before.items():
        for key, value in row.items():
            if key.startswith(("train/", "val/")) and not any(t in key for t in TIMING):
                assert after[step].get(key) == value, (step, key, value, after[step].get(key))
                compared += 1
    assert compared > 50
    if "max_staleness" in settings:  # it trained asynchronously: step 1's rollout fresh, every later one a step old
        assert {row["train/staleness/max"] for row in after.values() if "train/staleness/max" in row} == {"0.0", "1.0"}
    a = load_file(tmp_path / "straight" / "hf_model" / "model.safetensors")
    b = load_file(tmp_path / "crashed" / "hf_model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_rank_validation_evaluates_each_problem_once_and_equals_one_rank(tmp_path):
    """``validate`` of the same model on 1 and on 2 ranks: each rank scores its share of the held-out
    batches, the metrics are summed over ranks, and the result equals the 1-rank evaluation."""
    from helpers import ROOT as REPO

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    results = {}
    for devices in (1, 2):
        out = tmp_path / f"ranks{devices}"
        command = [
            sys.executable, "-m", "r1_lightning.cli", "validate",
            "--config", str(REPO / "configs" / "r1_zero_tiny.yaml"),
            "--config", str(REPO / "configs" / "strategy" / "ddp.yaml"), "--trainer.devices", str(devices),
            "--model.init_args.model", "tiny:random", "--model.init_args.sampling.max_new_tokens", "12",
            "--data.init_args.val_batch_size", "8", "--data.init_args.source.init_args.val_size", "40",
            "--trainer.default_root_dir", str(out), "--trainer.logger.init_args.save_dir", str(out),
        ]  # fmt: skip
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        rows = list(csv.DictReader(next(out.rglob("metrics.csv")).open()))
        results[devices] = {k: float(v) for row in rows for k, v in row.items() if k.startswith("val/") and v}
    assert set(results[1]) == set(results[2]) and "val/pass@1" in results[1]
    assert results[1]["val/problems"] == results[2]["val/problems"] == 40  # each problem once, on either
    for key, value in results[1].items():
        assert results[2][key] == pytest.approx(value, abs=1e-6), key


@pytest.mark.slow
def test_dynamic_sampling_on_two_ranks_keeps_them_in_step(tmp_path):
    """max_num_gen_batches under DDP: ranks draw different extra prompts and different numbers of useful
    groups, yet each trains B whole groups with signal, in lockstep (identical weights after each step)."""
    probe = tmp_path / "probe"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    command = [
        sys.executable, "-m", "r1_lightning.cli.main", "fit",
        "--config", str(ROOT / "configs" / "r1_zero_tiny.yaml"),
        "--config", str(ROOT / "configs" / "strategy" / "ddp.yaml"),
        *probe_args(tmp_path, probe),
        "--model.init_args.rewards", "{helpers.rewards.signal_on_even_answers: 1.0}",
        "--model.init_args.max_num_gen_batches", "6",
    ]  # fmt: skip
    ranks = _run_probed(command, tmp_path, probe, env)
    for step0, step1 in zip(*ranks, strict=True):
        assert step0["weights"] == step1["weights"]
        for step in (step0, step1):
            assert step["num_completions"] == 4 * step["group_size"]  # B groups on every rank
            assert all(abs(s) < 1e-4 for s in step["group_advantage_sums"])
    rows = []
    for path in tmp_path.glob("**/metrics.csv"):
        with open(path) as handle:
            rows += [r for r in csv.DictReader(handle) if r.get("train/zero_std_groups")]
    assert rows and all(float(r["train/zero_std_groups"]) == 0.0 for r in rows)
