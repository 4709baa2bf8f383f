"""FSDP2 on CPU: two gloo processes train like DDP, with sharded weights, and resume from sharded checkpoints."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]


def _run(workdir: Path, strategy: str, max_steps: int, *extra: str) -> Path:
    """Two CPU processes of the tiny R1-Zero config; returns the exported HF folder."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    workdir.mkdir(parents=True, exist_ok=True)
    export = workdir / "hf"
    command = [
        sys.executable,
        "-m",
        "r1_lightning.cli.main",
        "fit",
        "--config",
        str(ROOT / "configs" / "r1_zero_tiny.yaml"),
        "--config",
        str(ROOT / "configs" / "strategy" / f"{strategy}.yaml"),
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "2",
        "--trainer.precision",
        "32-true",
        "--trainer.max_steps",
        str(max_steps),
        "--trainer.val_check_interval",
        "null",
        "--trainer.default_root_dir",
        str(workdir),
        "--trainer.logger.init_args.save_dir",
        str(workdir),
        "--trainer.callbacks.every_n_train_steps",
        "1",  # the ModelCheckpoint: a checkpoint every step
        "--model.init_args.model",
        "tiny:random",
        "--model.init_args.export_dir",
        str(export),
        "--model.init_args.rewards",
        "{helpers.rewards.varied_reward: 1.0}",
        "--model.init_args.lr",
        "1e-3",
        "--model.init_args.val_num_samples",
        "2",
        "--data.init_args.batch_size",
        "2",
        "--model.init_args.ref_model_sync_steps",
        "2",  # a reference reset (a sharded copy) before step 3
        *extra,
    ]
    result = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return export


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


@pytest.mark.slow
def test_fsdp2_trains_like_ddp_with_sharded_weights_and_resumes(tmp_path):
    ddp = _run(tmp_path / "ddp", "ddp", 3)
    probe = tmp_path / "probe"
    fsdp = _run(
        tmp_path / "fsdp",
        "fsdp",
        3,
        "--trainer.callbacks+=helpers.fsdp_probe.ShardProbe",
        f"--trainer.callbacks.out_dir={probe}",
    )

    ranks = [json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rank in ranks:
        assert len(rank["steps"]) == 3
        for step in rank["steps"]:
            # each rank holds about half of every parameter, and the optimizer was built on the shards
            assert step["local_numel"] < 0.6 * step["full_numel"]
            assert step["optimizer_sharded"] and 0 < step["grad_norm"] < float("inf")  # and it trained
            assert "sharded (FSDP2)" in step["lean_outside"] and step["lean_gathered"] is None
        # evaluation ran under sharded weights before and after training, with finite results
        assert len(rank["evaluations"]) == 2
        assert all(value == value for metrics in rank["evaluations"] for value in metrics.values())
    assert sum(s["local_numel"] for r in ranks for s in r["steps"][:1]) == ranks[0]["steps"][0]["full_numel"]
    for step0, step1 in zip(ranks[0]["steps"], ranks[1]["steps"], strict=True):
        assert step0["decode_steps"] == step1["decode_steps"]  # every rank decoded the same number of steps
        assert not set(step0["prompts"]) & set(step1["prompts"])  # and trained on its own prompts

    # Sharding changes where the arithmetic happens, not its result: FSDP2 ends where DDP ends.
    ddp_weights, fsdp_weights = _weights(ddp), _weights(fsdp)
    assert ddp_weights.keys() == fsdp_weights.keys()
    for name in ddp_weights:
        torch.testing.assert_close(fsdp_weights[name], ddp_weights[name], atol=2e-5, rtol=1e-4)

    # Resume from the sharded step-2 checkpoint (a folder of shards) and end where the 3-step run ended.
    checkpoints = tmp_path / "fsdp" / "r1_zero_tiny" / "version_0" / "checkpoints"
    step2 = next(p for p in checkpoints.iterdir() if "step=2" in p.name)
    assert step2.is_dir() and any(step2.glob("*.distcp"))
    resumed = _run(tmp_path / "resumed", "fsdp", 3, "--ckpt_path", str(step2))
    for name, value in _weights(resumed).items():
        torch.testing.assert_close(value, fsdp_weights[name], atol=1e-6, rtol=1e-6)


def test_fsdp2_refuses_lora_and_quantization_clearly():
    from r1_lightning.training.grpo import GRPOModule

    module = GRPOModule(model="tiny:random", lora={"r": 4}, validate_at_start=False)
    module._device_mesh = {"data_parallel": object()}  # what FSDP2Strategy hands configure_model
    with pytest.raises(
        ValueError, match="FSDP2: `lora`, `quantization` and `reference_quantization` are not supported"
    ):
        module.configure_model()
