"""TRL's and open-r1's reward functions plug in unchanged: a GRPO run on a chat-format dataset (the
``prompt`` column holds messages, the reference is ``solution``) with TRL's own reward functions by
dotted path, a factory reward configured by ``factory_args``, and a reward that records what it gets."""

import json

import pytest
from helpers import fast_args
from helpers.rewards import RECORDED

from r1_lightning.cli.main import main
from r1_lightning.rewards.contract import as_completions, completion_token_ids, reward_inputs

pytest.importorskip("trl.rewards", reason="trl (the dev extra) provides the peer reward functions")

CONFIG = "configs/r1_zero_tiny.yaml"


def test_peer_rewards_run_unchanged_on_a_chat_dataset(tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    rows = [
        {"prompt": [{"role": "user", "content": f"What is {a} + {a}?"}], "solution": str(2 * a), "level": a % 3}
        for a in range(20)
    ]
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rewards = {
        "trl.rewards.think_format_reward": 0.5,
        "trl.rewards.accuracy_reward": 1.0,  # reads completion[0]["content"] and `solution`
        "overlong": {
            "function": "trl.rewards.get_soft_overlong_punishment",
            "weight": 0.1,
            "factory_args": {"max_completion_len": 12, "soft_punish_cache": 4},
        },
        "helpers.rewards.recording_reward": 0.1,
    }
    source = {
        "class_path": "r1_lightning.data.FileSource",
        "init_args": {"path": str(data), "answer_column": "solution", "val_size": 4},
    }
    RECORDED.clear()
    cli = main(
        [
            "fit",
            *fast_args(
                tmp_path,
                "--model.init_args.num_generations",
                "2",
                "--model.init_args.rewards",
                json.dumps(rewards),
                "--data.init_args.template",
                "chat",
                "--data.init_args.batch_size",
                "2",
                "--data.init_args.source",
                json.dumps(source),
                config=str(root / CONFIG),
                steps=2,
            ),
        ]
    )
    assert cli.trainer.global_step == 2
    first, second = RECORDED
    assert [s["step"] for s in RECORDED] == [0, 1]  # trainer_state.global_step before each update
    # chat prompts -> chat completions, as TRL passes them; prompts are the dataset's messages
    assert all(c == [{"role": "assistant", "content": c[0]["content"]}] for c in first["completions"])
    assert first["prompts"][0][0]["role"] == "user" and first["prompts"][0] == first["prompts"][1]  # G = 2 per prompt
    assert first["solution"][0] == str(int(first["prompts"][0][0]["content"].split()[2]) * 2)
    assert set(first["level"]) <= {0, 1, 2}
    # completion_ids: each completion's generated tokens, no padding; they decode to the completion
    tokenizer = cli.model.tokenizer
    for ids, completion in zip(first["ids"], first["completions"], strict=True):
        assert ids and tokenizer.decode(ids, skip_special_tokens=True) == completion[0]["content"]
    header = (Path(cli.trainer.log_dir) / "metrics.csv").read_text().splitlines()[0].split(",")
    for name in ("think_format_reward", "accuracy_reward", "overlong", "recording_reward"):
        assert f"train/reward/{name}" in header, name


def test_text_prompts_get_text_completions_and_the_state():
    from r1_lightning.rewards.contract import RewardState

    completions, kwargs = reward_inputs(
        ["4", "5"],
        {"raw_prompt": ["2+2", "2+2"], "answer": ["4", "4"]},
        [[7, 1], [8, 1]],
        RewardState(3, 10, 0.0),
        rendered_prompts=["T: 2+2", "T: 2+2"],
    )
    assert completions == ["4", "5"]
    assert kwargs["prompts"] == ["2+2", "2+2"] and kwargs["answer"] == ["4", "4"]
    assert kwargs["completion_ids"] == [[7, 1], [8, 1]] and kwargs["trainer_state"].global_step == 3
    assert as_completions(["x"], [[{"role": "user", "content": "q"}]]) == [[{"role": "assistant", "content": "x"}]]


def test_completion_ids_drop_padding():
    import torch

    ids = torch.tensor([[5, 6, 0, 0], [7, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]])
    assert completion_token_ids(ids, mask) == [[5, 6], [7]]


def test_factory_args_errors_name_the_reward():
    from r1_lightning.rewards.registry import build_reward

    with pytest.raises(ValueError, match="reward 'overlong': calling its factory"):
        build_reward("overlong", {"function": "get_soft_overlong_punishment", "factory_args": {"max_len": 3}})
    with pytest.raises(ValueError, match="max_penalty 1.0 should not be positive"):
        build_reward("rep", {"function": "get_repetition_penalty_reward", "factory_args": {"max_penalty": 1.0}})
