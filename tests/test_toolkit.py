"""TRL 1.16's GRPO options under TRL's names run from the shipped default config by a command-line
override: every loss type, its parameters, the off-policy mask and the entropy mask, a few steps each."""

import csv

import pytest
from helpers import fast_args

from r1_lightning.cli.main import main

OPTIONS = [
    *[["--model.init_args.loss_type", name] for name in ("grpo", "dapo", "dr_grpo", "bnpo", "sapo", "luspo", "vespo")],
    ["--model.init_args.loss_type", "cispo", "--model.init_args.epsilon_high", "5.0"],
    ["--model.init_args.loss_type", "sequence"],  # the older name, an alias of grpo
    ["--model.init_args.loss_params", "{delta: 1.5}"],
    ["--model.init_args.loss_type", "sapo", "--model.init_args.loss_params", "{sapo_temperature_neg: 2.0}"],
    ["--model.init_args.off_policy_mask_threshold", "0.1", "--model.init_args.num_iterations", "2"],
    ["--model.init_args.top_entropy_quantile", "0.2"],
]


@pytest.mark.slow
@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: "-".join(a.rsplit(".", 1)[-1] for a in o[::2]) + o[1])
def test_each_option_trains_from_the_shipped_config(tmp_path, option):
    main(["fit", *fast_args(tmp_path, "--model.init_args.rewards", "{helpers.rewards.varied_reward: 1.0}",
                            "--data.init_args.batch_size", "4", *option, steps=2)])  # fmt: skip
    rows = []
    for path in tmp_path.glob("**/metrics.csv"):
        with open(path) as handle:
            rows += [r for r in csv.DictReader(handle) if r.get("train/loss")]
    assert len(rows) >= 1 and all(r["train/loss"] not in ("nan", "inf") for r in rows)


@pytest.mark.parametrize(
    "option, message",
    [
        (["--model.init_args.loss_type", "ppo"], "loss_type"),  # (the Literal type: jsonargparse names it)
        (["--model.init_args.top_entropy_quantile", "0"], "`top_entropy_quantile` must be in"),
        (["--model.init_args.off_policy_mask_threshold", "-1"], "`off_policy_mask_threshold` must be >= 0"),
        (["--model.init_args.logprob_chunk_size", "-3"], "`logprob_chunk_size` must be a whole number"),
    ],
)
def test_a_bad_value_is_one_clear_line(tmp_path, option, message):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "r1_lightning.cli", "fit", *fast_args(tmp_path, *option, steps=1)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr
