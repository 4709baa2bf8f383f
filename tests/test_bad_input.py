"""Bad input gets a clear error naming the thing and the fix, or is handled and counted.

The other faults of the list live next to the code they test: a missing dataset column
(test_data.py, test_sft.py), an empty or missing file (test_data.py), prompts over the length limit
(test_data.py: skipped and counted), a reward function that raises or returns NaN/inf
(test_rewards.py: the error names the function and shows the completion), all-equal groups
(test_losses.py: zero advantage, no NaN), a model path that does not exist (test_rollout.py).
"""

from pathlib import Path

import pytest
import torch

from r1_lightning.cli.main import main
from r1_lightning.runs.lightning_cli import suggest_keys

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "r1_zero_tiny.yaml")


@pytest.mark.parametrize(
    "flag, suggestion",
    [
        ("--model.init_args.num_generation", "did you mean 'num_generations'?"),
        ("--model.init_args.lrr", "did you mean 'lr'?"),
        ("--trainer.max_stepz", "did you mean 'trainer.max_steps'?"),
    ],
)
def test_typo_in_a_config_key_names_it_and_suggests_the_right_one(flag, suggestion, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", TINY, flag, "4"])
    error = capsys.readouterr().err
    assert flag.split(".")[-1] in error and suggestion in error


def test_typo_in_a_yaml_file_is_caught_too(tmp_path, capsys):
    typo = tmp_path / "typo.yaml"
    typo.write_text("model:\n  init_args:\n    epsilon_hihg: 0.28\n")
    with pytest.raises(SystemExit):
        main(["fit", "--config", TINY, "--config", str(typo)])
    assert "did you mean 'epsilon_high'?" in capsys.readouterr().err


def test_suggestions_list_parameters_when_nothing_is_close():
    (hint,) = suggest_keys(
        "class_path 'r1_lightning.generation.rollout.SamplingConfig':\n Option 'zzz' is not accepted"
    )
    assert "temperature" in hint


def test_empty_split_and_empty_source_are_clear_errors():
    from r1_lightning.data import ArithmeticTask, PromptDataModule
    from r1_lightning.data.sources import PromptSource

    with pytest.raises(ValueError, match="validation split is empty.*val_size"):
        PromptDataModule(source=ArithmeticTask(val_size=0)).val_records()

    class Nothing(PromptSource):
        def iter_train(self, seed, epoch):
            return iter(())

        def val_records(self, seed):
            return []

    with pytest.raises(ValueError, match="yielded no records"):
        next(iter(PromptDataModule(source=Nothing()).train_dataloader()))


def test_empty_completions_score_zero_everywhere():
    from r1_lightning.rewards import accuracy_reward, format_reward, tag_count_reward
    from r1_lightning.rewards.code import code_reward
    from r1_lightning.rewards.language import language_consistency_reward

    assert accuracy_reward([""], answer=["3"]) == [0.0]
    assert format_reward([""]) == [0.0]
    assert tag_count_reward([""]) == [0.0]
    assert code_reward([""], tests=[["assert True"]]) == [0.0]
    assert language_consistency_reward([""]) == [0.0]


@pytest.mark.parametrize("loss_type", ["sequence", "token", "dr_grpo"])
def test_a_completion_with_no_counted_tokens_gives_no_nan(loss_type):
    """An empty (or masked-out) completion contributes nothing, and the loss and gradient stay finite."""
    from r1_lightning.training.losses import grpo_loss

    logprobs = torch.randn(2, 4, requires_grad=True)
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]])
    out = grpo_loss(
        logprobs,
        logprobs.detach(),
        torch.tensor([1.0, -1.0]),
        mask,
        loss_type=loss_type,
        num_sequences=2,
        num_tokens=2,
        max_completion_length=4,
    )
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(logprobs.grad).all()
    assert torch.all(logprobs.grad[1] == 0)


def test_tokenizer_without_pad_token_uses_eos_and_without_either_is_an_error(
    tmp_path, tiny_model_and_tokenizer, caplog
):
    from r1_lightning.models.loading import load_tokenizer

    _, tokenizer = tiny_model_and_tokenizer
    no_pad = tmp_path / "no_pad"
    tokenizer.save_pretrained(no_pad)
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(no_pad)
    reloaded.pad_token = None
    reloaded.save_pretrained(no_pad)
    loaded = load_tokenizer(str(no_pad))
    assert loaded.pad_token_id == loaded.eos_token_id and loaded.padding_side == "left"
    assert "no pad token; using its EOS token" in caplog.text

    reloaded.eos_token = None
    neither = tmp_path / "neither"
    reloaded.save_pretrained(neither)
    with pytest.raises(ValueError, match="neither a pad nor an EOS token"):
        load_tokenizer(str(neither))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_an_accelerator_this_machine_lacks_is_one_config_error(tmp_path):
    from helpers import fast_args

    from r1_lightning.errors import ConfigError

    with pytest.raises(ConfigError, match="hardware settings cannot run here.*trainer.accelerator"):
        main(["fit", *fast_args(tmp_path, "--trainer.accelerator", "gpu")])


def test_slurm_tasks_per_node_against_devices_is_one_config_error(tmp_path, monkeypatch):
    """Under SLURM, ``--ntasks-per-node`` must equal ``trainer.devices``; Lightning checks it inside the
    launcher (a traceback); the CLI checks it first and says it in one line."""
    from helpers import fast_args

    from r1_lightning.errors import ConfigError

    slurm = dict(SLURM_NTASKS="4", SLURM_NTASKS_PER_NODE="4", SLURM_JOB_NAME="job", SLURM_NODELIST="localhost")
    slurm.update(SLURM_NNODES="1", SLURM_JOB_ID="1", SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NODEID="0")
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    ddp = str(ROOT / "configs" / "strategy" / "ddp.yaml")
    with pytest.raises(ConfigError, match="ntasks-per-node=4.*devices=4"):
        main(["fit", *fast_args(tmp_path, "--config", ddp)])
