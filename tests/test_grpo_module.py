"""GRPOModule pieces that need no Trainer: evaluation arithmetic and argument validation."""

import pytest
import torch

from r1_lightning.generation.rollout import Generation
from r1_lightning.training.grpo import GRPOModule


def _fake_generation(texts):
    n = len(texts)
    return Generation(
        input_ids=torch.zeros(n, 3, dtype=torch.long),
        attention_mask=torch.ones(n, 3, dtype=torch.long),
        completion_mask=torch.tensor([[1, 1]] * n),
        prompt_length=1,
        truncated=torch.zeros(n, dtype=torch.bool),
        texts=texts,
        seconds=0.1,
    )


def test_validation_pass_at_1_and_majority_vote_hand_computed(monkeypatch):
    module = GRPOModule(model="tiny:random", beta=0.0, val_num_samples=2)
    texts = [
        "<think>a</think><answer>4</answer>",
        "<answer>5</answer>",  # prompt 1 (gold 4): 1 of 2, tie -> "4"
        "<answer>7</answer>",
        "<think>b</think><answer>7</answer>",  # prompt 2 (gold 8): 0 of 2
    ]
    monkeypatch.setattr(module.generator, "generate", lambda model, prompts, sampling, **kw: _fake_generation(texts))
    module.evaluate_batch({"prompt": ["p1", "p2"], "answer": ["4", "8"]})
    metrics = module.compute_val_metrics()
    assert metrics["val/pass@1"] == pytest.approx(0.25)
    assert metrics["val/maj@2"] == pytest.approx(0.5)
    assert metrics["val/format"] == pytest.approx(0.5)
    assert metrics["val/completion_length"] == pytest.approx(2.0)


def test_val_sampling_defaults_to_paper_protocol():
    module = GRPOModule(model="tiny:random", beta=0.0, sampling={"max_new_tokens": 16, "stop_strings": ["</answer>"]})
    assert module.val_sampling.temperature == 0.6 and module.val_sampling.top_p == 0.95
    assert module.val_sampling.max_new_tokens == 16 and module.val_sampling.stop_strings == ("</answer>",)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_generations": 1}, "num_generations"),
        ({"loss_type": "ppo"}, "loss_type"),
        ({"num_iterations": 0}, "num_iterations"),
        ({"rewards": {"acuracy_reward": 1.0}}, "Did you mean 'accuracy_reward'"),
    ],
)
def test_bad_arguments_name_the_key(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GRPOModule(model="tiny:random", beta=0.0, **kwargs)
