"""Exact resume: a run killed with SIGKILL and resumed from ``last`` continues as if never stopped."""

import copy
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
DETERMINISTIC = [
    "train/reward",
    "train/loss",
    "train/policy_loss",
    "train/kl",
    "train/entropy",
    "train/completion_length",
    "train/grad_norm",
    "train/lr",
    "train/reward/varied_reward",
]


def _config(tmp_path: Path, name: str, callbacks: list[dict], max_steps: int = 6, **model_settings) -> Path:
    config = yaml.safe_load((ROOT / "configs/r1_zero_tiny.yaml").read_text())
    config = copy.deepcopy(config)
    trainer = config["trainer"]
    trainer.update(max_steps=max_steps, val_check_interval=3, log_every_n_steps=2, enable_progress_bar=False)
    trainer["logger"]["init_args"].update(save_dir=str(tmp_path / name), name="run")
    checkpoint = {
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {
            "dirpath": str(tmp_path / name / "checkpoints"),
            "save_last": True,
            "every_n_train_steps": 1,
            "save_top_k": 2,
            "monitor": "step",
            "mode": "max",
            "filename": "step-{step}",
        },
    }
    trainer["callbacks"] = [checkpoint, *callbacks]
    model = config["model"]["init_args"]
    # A random-init model (no one-off pretraining of the tiny base in CI) with a reward that varies.
    model.update(
        model="tiny:random",
        num_generations=4,
        val_num_samples=2,
        export_dir=str(tmp_path / name / "hf_model"),
        rewards={"helpers.rewards.varied_reward": 1.0, "accuracy_reward": 1.0},
        **model_settings,
    )
    model["sampling"]["max_new_tokens"] = 16
    data = config["data"]["init_args"]
    data.update(batch_size=4, val_batch_size=8)
    data["source"]["init_args"]["val_size"] = 8
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _fit(config: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "r1_lightning.cli", "fit", "--config", str(config), *extra],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _metrics(run_dir: Path) -> dict[int, dict[str, str]]:
    rows: dict[int, dict[str, str]] = {}
    for path in sorted(run_dir.glob("run/version_*/metrics.csv")):
        for row in csv.DictReader(path.open()):
            step = int(row["step"])
            rows.setdefault(step, {}).update({k: v for k, v in row.items() if v != ""})
    return rows


def _prompts(path: Path) -> list[tuple[int, list[str]]]:
    return [(r["step"], r["prompts"]) for r in map(json.loads, path.read_text().splitlines())]


@pytest.mark.slow
@pytest.mark.parametrize(
    "settings",
    [{}, {"max_staleness": 2}, {"tools": ["helpers.tools.add"], "max_tool_calling_iterations": 2}],
    ids=["synchronous", "async-k2", "tools"],
)
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, settings):
    """With ``max_staleness: 2`` the checkpoint of step 3 holds the in-flight rollouts of steps 4 and 5."""

    def recorder(name: str) -> dict:
        return {
            "class_path": "helpers.resume_probe.PromptRecorder",
            "init_args": {"path": str(tmp_path / f"{name}_prompts.jsonl")},
        }

    straight = _fit(_config(tmp_path, "straight", [recorder("straight")], **settings))
    assert straight.returncode == 0, straight.stderr[-3000:]

    killer = {
        "class_path": "helpers.pipeline_probe.KillAtStep",
        "init_args": {"step": 4, "marker": str(tmp_path / "killed")},
    }
    crashed_config = _config(tmp_path, "crashed", [recorder("crashed"), killer], **settings)
    crashed = _fit(crashed_config)
    assert crashed.returncode == -9, "the probe should have SIGKILLed the run at step 4"
    checkpoints = tmp_path / "crashed" / "checkpoints"
    # The kill came before step 4's checkpoint: last.ckpt holds step 3.
    saved = torch.load(checkpoints / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 3
    if "max_staleness" in settings:  # batches 3, 4 (0-based): sampled at steps 2, 3 by the weights after steps 1, 2
        assert [(r["batch_index"], r["version"]) for r in saved["async_rollouts"][0]] == [(3, 1), (4, 2)]

    resumed = _fit(crashed_config, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    # Prompts: the resumed run picks up the stream at step 4; nothing repeated or skipped.
    straight_prompts = _prompts(tmp_path / "straight_prompts.jsonl")
    crashed_prompts = _prompts(tmp_path / "crashed_prompts.jsonl")
    assert [s for s, _ in crashed_prompts] == [1, 2, 3, 4, 4, 5, 6]  # step 4 ran, was lost, and ran again
    stitched = crashed_prompts[:3] + crashed_prompts[4:]
    assert stitched == straight_prompts

    # Metrics of the resumed steps equal the uninterrupted run's, bitwise (CPU, same threads).
    before, after = _metrics(tmp_path / "straight"), _metrics(tmp_path / "crashed")
    for step in (4, 6):
        for key in DETERMINISTIC:
            if key in before.get(step, {}):
                assert after[step][key] == before[step][key], (step, key)
    assert "train/reward" in after[6]

    # And the final weights are identical.
    a = load_file(tmp_path / "straight" / "hf_model" / "model.safetensors")
    b = load_file(tmp_path / "crashed" / "hf_model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)

    # Keep-last-K (save_top_k=2 on the step): only the two newest step checkpoints remain, plus last.
    assert sorted(p.name for p in checkpoints.glob("*.ckpt")) == ["last.ckpt", "step-step=5.ckpt", "step-step=6.ckpt"]
