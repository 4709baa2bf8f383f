"""The CLI: every shipped YAML parses, the tiny config trains, checkpoints export to HF format."""

from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from helpers import NO_EVAL
from helpers import fast_args as _fast

from r1_lightning.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "r1_zero_tiny.yaml")
# (W&B sweep files and pipelines are not LightningCLI configs: test_sweeps.py / test_pipeline.py check them.)
ALL_CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if p.parent.name not in ("sweeps", "pipeline"))
# Complete run configs name a model class; the rest (strategy/, logger/, memory/) are fragments to compose.
FULL_CONFIGS = [p for p in ALL_CONFIGS if "class_path" in (yaml.safe_load(p.read_text()).get("model") or {})]
PARTIAL_CONFIGS = [p for p in ALL_CONFIGS if p not in FULL_CONFIGS]


@pytest.mark.parametrize("config", FULL_CONFIGS, ids=lambda p: p.name)
def test_print_config_shows_the_whole_resolved_config(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    assert "class_path: r1_lightning" in capsys.readouterr().out


@pytest.mark.parametrize("config", PARTIAL_CONFIGS, ids=lambda p: p.name)
def test_partial_configs_compose_with_the_tiny_config(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", TINY, "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    assert "trainer:" in capsys.readouterr().out


def test_typo_in_config_key_is_reported(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", TINY, "--model.init_args.lrr", "0.1"])
    assert "lrr" in capsys.readouterr().err


def test_fast_dev_run_of_the_tiny_config(tmp_path):
    cli = main(["fit", *_fast(tmp_path, "--trainer.fast_dev_run", "1")])
    assert cli.trainer.global_step == 1
    assert (tmp_path / "hf" / "config.json").exists()


def test_short_run_logs_metrics_checkpoints_and_exports(tmp_path):
    cli = main(
        [
            "fit",
            *_fast(
                tmp_path,
                "--trainer.max_steps",
                "2",
                "--trainer.val_check_interval",
                "2",
                "--trainer.log_every_n_steps",
                "1",
                "--model.init_args.val_num_samples",
                "2",
                "--data.init_args.source.init_args.val_size",
                "4",
                "--model.init_args.micro_batch_size",
                "32",
                "--model.init_args.num_iterations",
                "2",
                "--model.init_args.rewards",
                "{accuracy_reward: 1.0, format_reward: 0.5, helpers.rewards.varied_reward: 0.1}",
            ),
        ]
    )
    module = cli.model
    log_dir = Path(cli.trainer.log_dir)
    metrics = pd.read_csv(log_dir / "metrics.csv")
    for column in [
        "train/reward",
        "train/reward/accuracy_reward",
        "train/reward/format_reward",
        "train/kl",
        "train/reward/varied_reward",
        "train/clip_ratio",
        "train/entropy",
        "train/completion_length",
        "train/truncated_fraction",
        "train/zero_std_groups",
        "train/rollout_tokens_per_s",
        "train/step_seconds",
        "train/reflective_words",
        "train/time/rollout",
        "train/mismatch/abs_logprob_diff",
        "train/mismatch/kl",
        "train/mismatch/frac_over_threshold",
        "train/time/reward",
        "train/time/train",
        "train/reflection_rate",
        "val/pass@1",
        "val/maj@4" if "val/maj@4" in metrics else "val/maj@2",
    ]:
        assert column in metrics.columns, column
    assert metrics["val/pass@1"].notna().sum() >= 2  # before training and after
    assert (log_dir / "config.yaml").exists()
    # a step's time covers the rollout, the rewards and the update, and is the sum of its parts
    timed = metrics.dropna(subset=["train/step_seconds"])
    parts = timed["train/time/rollout"] + timed["train/time/reward"] + timed["train/time/train"]
    assert ((timed["train/step_seconds"] - parts).abs() < 1e-3).all()
    assert (timed["train/time/rollout"] > 0).all()
    # max_steps counts optimizer steps: one rollout x num_iterations 2
    assert cli.trainer.global_step == 2
    # the frozen reference did not move; the policy did
    moved = any(
        not torch.equal(p, r) for p, r in zip(module.policy.parameters(), module.reference.parameters(), strict=True)
    )
    assert moved and all(not p.requires_grad for p in module.reference.parameters())
    checkpoint = next((log_dir / "checkpoints").glob("*.ckpt"))
    main(["export", "--ckpt_path", str(checkpoint), "--out_dir", str(tmp_path / "exported")])
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "exported")
    for p, q in zip(exported.parameters(), module.policy.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_beta_zero_loads_no_reference(tmp_path):
    cli = main(["fit", *_fast(tmp_path, "--trainer.fast_dev_run", "1", "--model.init_args.beta", "0")])
    assert cli.model.reference is None


def test_reference_reset_schedule(tmp_path):
    cli = main(
        [
            "fit",
            *_fast(
                tmp_path,
                "--trainer.max_steps",
                "2",
                "--model.init_args.ref_model_sync_steps",
                "2",
                *NO_EVAL,
                "--trainer.val_check_interval",
                "2",
            ),
        ]
    )
    module = cli.model
    for p, r in zip(module.policy.parameters(), module.reference.parameters(), strict=True):
        torch.testing.assert_close(p, r)


@pytest.mark.slow
def test_console_script_exits_zero_after_a_run(tmp_path):
    """The installed script runs ``sys.exit(<entry point>())``: a successful run must exit 0."""
    import subprocess
    import sys

    tomllib = pytest.importorskip("tomllib")  # (Python >= 3.11)

    target = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["r1-lightning"]
    module, function = target.split(":")
    args = ["fit", *_fast(tmp_path, "--trainer.fast_dev_run", "1", "--model.init_args.validate_at_start", "false")]
    code = (
        f"import sys; from {module} import {function} as entry; sys.argv = ['r1-lightning', *{args!r}]; "
        "sys.exit(entry())"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_truncated_importance_sampling_trains(tmp_path):
    cli = main(
        [
            "fit",
            *_fast(
                tmp_path,
                "--trainer.max_steps",
                "2",
                *NO_EVAL,
                "--model.init_args.tis_cap",
                "2.0",
                "--model.init_args.rewards",
                "{helpers.rewards.varied_reward: 1.0}",
            ),
        ]
    )
    assert cli.trainer.global_step == 2 and cli.model.hparams.tis_cap == 2.0
