"""The frozen reference: R1's periodic reset copies the *moved* policy, at the due optimizer steps (also
with num_iterations > 1), and a reset reference travels in checkpoints.

The runs use ``varied_reward``, whose scores differ within every group even on a random-init model, so
the policy really moves and a reset that does nothing leaves the reference measurably behind.
"""

import pandas as pd
import pytest
import torch
from helpers import fast_args

from r1_lightning.cli.main import main
from r1_lightning.training.grpo import GRPOModule


def _max_gap(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_a_reset_copies_the_current_policy_into_the_reference():
    module = GRPOModule(model="tiny:random", beta=0.1, validate_at_start=False, validate_at_end=False)
    initial = {k: v.clone() for k, v in module.reference.state_dict().items()}
    with torch.no_grad():
        for p in module.policy.parameters():
            p.add_(0.01)
    assert _max_gap(module.policy, module.reference) == pytest.approx(0.01, abs=1e-6)
    module.reset_reference()
    assert _max_gap(module.policy, module.reference) == 0.0
    moved = [k for k, v in module.reference.state_dict().items() if not torch.equal(v, initial[k])]
    assert moved, "the reference still holds the initial weights"
    assert module.reference_diverged and module.reference_resets == [0]


def test_the_reset_follows_the_policy_not_the_other_way():
    module = GRPOModule(model="tiny:random", beta=0.1, validate_at_start=False, validate_at_end=False)
    before = [p.clone() for p in module.policy.parameters()]
    with torch.no_grad():
        for p in module.reference.parameters():
            p.add_(1.0)
    module.reset_reference()
    assert all(torch.equal(p, b) for p, b in zip(module.policy.parameters(), before, strict=True))
    assert _max_gap(module.policy, module.reference) == 0.0


def _run(tmp_path, steps: int, sync: int, mu: int = 1):
    args = fast_args(
        tmp_path,
        "--model.init_args.ref_model_sync_steps",
        str(sync),
        "--model.init_args.num_iterations",
        str(mu),
        "--model.init_args.beta",
        "0.1",
        "--model.init_args.rewards",
        '{"helpers.rewards.varied_reward": 1.0}',
        "--trainer.limit_val_batches",
        "0",
        "--trainer.log_every_n_steps",
        "1",
        steps=steps,
    )
    return main(["fit", *args])


def test_a_run_resets_at_the_due_steps_to_the_moved_policy(tmp_path):
    initial = GRPOModule(model="tiny:random").policy
    cli = _run(tmp_path, steps=4, sync=2)
    module = cli.model
    assert module.reference_resets == [2, 4]
    # the last reset came after the last step: the reference is the final policy, which has moved
    assert _max_gap(module.policy, module.reference) == 0.0
    assert _max_gap(module.policy, initial) > 1e-4
    metrics = pd.read_csv(next(tmp_path.rglob("metrics.csv")))
    assert metrics.loc[metrics["train/reference_reset"] == 1, "step"].tolist() == [2, 4]


def test_resets_are_not_skipped_when_one_batch_makes_several_optimizer_steps(tmp_path):
    # mu = 3: global_step moves 0 -> 3 -> 6 over two batches; a once-per-batch check would see neither 2 nor 4
    cli = _run(tmp_path, steps=6, sync=2, mu=3)
    assert cli.model.reference_resets == [2, 4, 6]
    assert _max_gap(cli.model.policy, cli.model.reference) == 0.0


def test_a_reset_reference_is_saved_and_restored(tmp_path):
    cli = _run(tmp_path, steps=2, sync=2)
    checkpoint = torch.load(next(tmp_path.rglob("*.ckpt")), weights_only=False, map_location="cpu")
    saved = {k[len("reference.") :]: v for k, v in checkpoint["state_dict"].items() if k.startswith("reference.")}
    assert saved, "a diverged reference must be in the checkpoint"
    for name, value in cli.model.reference.state_dict().items():
        torch.testing.assert_close(saved[name], value, rtol=0, atol=0)
