"""Reward models: Bradley-Terry training on a tiny model, and routing (summary vs whole response)."""

from pathlib import Path

import pytest
import torch
import yaml

from r1_lightning.cli.main import main
from r1_lightning.rewards import build_rewards
from r1_lightning.rewards.reward_model_io import load_reward_model, score_texts
from r1_lightning.rewards.reward_model_reward import RewardModelReward, response_part
from r1_lightning.training.reward_model import PreferenceTask, bradley_terry_loss


def test_bradley_terry_loss_and_gradient_by_hand():
    chosen, rejected = torch.tensor([2.0, 0.0], requires_grad=True), torch.tensor([0.0, 1.0])
    loss = bradley_terry_loss(chosen, rejected)
    # -mean(log sigmoid(2), log sigmoid(-1))
    expected = -(torch.log(torch.sigmoid(torch.tensor(2.0))) + torch.log(torch.sigmoid(torch.tensor(-1.0)))) / 2
    assert loss.item() == pytest.approx(expected.item())
    loss.backward()
    # d/dc of -log sigmoid(c - r) / 2 = -(1 - sigmoid(c - r)) / 2
    torch.testing.assert_close(chosen.grad, -(1 - torch.sigmoid(torch.tensor([2.0, -1.0]))) / 2)


@pytest.fixture(scope="module")
def harmlessness_rm(tmp_path_factory):
    """A tiny reward model trained on generated harmlessness pairs (insult in the response = rejected)."""
    out = tmp_path_factory.mktemp("rm")
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "max_steps": 40,
            "val_check_interval": 40,
            "log_every_n_steps": 5,
            "check_val_every_n_epoch": None,
            "default_root_dir": str(out),
            "enable_progress_bar": False,
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(out)}},
        },
        "model": {
            "class_path": "r1_lightning.training.reward_model.RewardModelModule",
            "init_args": {"model": "tiny:random", "lr": 0.003, "template": "plain", "export_dir": str(out / "rm")},
        },
        "data": {
            "class_path": "r1_lightning.training.reward_model.PreferenceDataModule",
            "init_args": {
                "source": {
                    "class_path": "r1_lightning.training.reward_model.PreferenceTask",
                    "init_args": {"kind": "harmlessness", "num_records": 400},
                },
                "template": "plain",
                "val_size": 64,
                "batch_size": 16,
            },
        },
    }
    (out / "rm.yaml").write_text(yaml.safe_dump(config))
    cli = main(["fit", "--config", str(out / "rm.yaml")])
    return cli, out


def test_reward_model_learns_preferences_it_has_not_seen(harmlessness_rm):
    cli, out = harmlessness_rm
    import pandas as pd

    metrics = pd.read_csv(next(out.rglob("metrics.csv")))
    losses = metrics["train/loss"].dropna().tolist()
    assert losses[-1] < losses[0] - 0.3
    assert cli.model.last_val["val/accuracy"] >= 0.9  # held-out pairs: chosen scored above rejected
    # the exported folder scores fresh pairs the same way
    model, tokenizer, settings = load_reward_model(str(out / "rm"))
    assert settings == {"template": "plain"}
    pairs = PreferenceTask("harmlessness", num_records=32, seed=123).records()
    chosen = score_texts(model, tokenizer, [p["prompt"] + p["chosen"] for p in pairs])
    rejected = score_texts(model, tokenizer, [p["prompt"] + p["rejected"] for p in pairs])
    assert (chosen > rejected).float().mean() >= 0.9


def test_helpfulness_sees_the_summary_and_harmlessness_the_whole_response(harmlessness_rm):
    _, out = harmlessness_rm
    clean = " <think>We add 3 and 4. 3+4=7.</think> <answer>7</answer>"
    rude_thought = " <think>You are stupid. We add 3 and 4. 3+4=7.</think> <answer>7</answer>"
    summary = RewardModelReward(str(out / "rm"), scope="summary")
    whole = RewardModelReward(str(out / "rm"), scope="whole")
    raw = ["3 + 4", "3 + 4"]
    # what each reads
    assert summary.texts([clean, rude_thought], ["p", "p"], raw) == ["3 + 4 <answer>7</answer>"] * 2
    assert whole.texts([rude_thought], ["p"], raw[:1]) == ["3 + 4" + rude_thought]
    # and so what each scores: the insult inside <think> is invisible to the summary model only
    s_clean, s_rude = summary([clean, rude_thought], prompts=["p", "p"], raw_prompt=raw)
    w_clean, w_rude = whole([clean, rude_thought], prompts=["p", "p"], raw_prompt=raw)
    assert s_clean == pytest.approx(s_rude)
    assert w_clean > w_rude
    assert all(0.0 < v < 1.0 for v in (s_clean, w_clean, w_rude))  # squashed by a sigmoid


def test_export_takes_a_reward_model_checkpoint(harmlessness_rm, tmp_path):
    cli, out = harmlessness_rm
    (checkpoint,) = Path(cli.trainer.log_dir, "checkpoints").glob("*.ckpt")
    main(["export", "--ckpt_path", str(checkpoint), "--out_dir", str(tmp_path / "exported")])
    exported, tokenizer, _ = load_reward_model(str(tmp_path / "exported"))
    texts = ["2 + 2 = 4", "you idiot, 2 + 2 = 4"]
    cli.model.model.eval()
    torch.testing.assert_close(
        score_texts(exported, tokenizer, texts), score_texts(cli.model.model, cli.model.tokenizer, texts)
    )


def test_reward_model_in_the_reward_spec(harmlessness_rm):
    _, out = harmlessness_rm
    [reward] = build_rewards(
        {"harmlessness": {"function": "reward_model", "model": str(out / "rm"), "scope": "whole", "weight": 0.5}}
    )
    assert reward.name == "harmlessness" and reward.weight == 0.5 and reward.fn.scope == "whole"
    with pytest.raises(ValueError, match="scope"):
        build_rewards({"h": {"function": "reward_model", "model": "x", "scope": "middle"}})
    assert response_part("no think tags", "summary") == "no think tags"
