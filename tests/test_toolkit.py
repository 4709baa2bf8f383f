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
    ["--model.init_args.entropy_coef", "0.01"],
    ["--model.init_args.multi_objective_aggregation", "normalize_then_sum"],
    ["--model.init_args.vllm_importance_sampling_mode", "sequence_mask"],
    ["--model.init_args.entropy_coef", "0.01", "--model.init_args.top_entropy_quantile", "0.5"],
    ["--model.init_args.max_staleness", "1"],
    ["--model.init_args.max_staleness", "2", "--model.init_args.off_policy_mask_threshold", "0.1"],
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
        (
            ["--model.init_args.entropy_coef", "0.1", "--model.init_args.logprob_chunk_size", "0"],
            "`entropy_coef` needs",
        ),
        (["--model.init_args.max_num_gen_batches", "-1"], "`max_num_gen_batches` must be >= 0"),
        (["--model.init_args.max_staleness", "-1"], "`max_staleness` must be >= 0"),
        (["--model.init_args.max_staleness", "1", "--model.init_args.num_iterations", "2"], "below `num_iterations"),
        (["--model.init_args.max_staleness", "1", "--model.init_args.max_num_gen_batches", "3"], "cannot be combined"),
        (["--model.init_args.off_policy_mask_threshold", "0.5"], "has nothing to mask"),
        (["--model.init_args.tools", "[helpers.tools.nope]"], "cannot be imported"),
        (
            ["--model.init_args.environment_factory", "x.Env", "--model.init_args.max_staleness", "1"],
            "`max_staleness` and `environment_factory` cannot be combined",
        ),
        (
            ["--model.init_args.tis_cap", "2", "--model.init_args.vllm_importance_sampling_mode", "token_mask"],
            "keep one",
        ),
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


@pytest.mark.slow
def test_log_completions_writes_every_step_once_across_a_resume(tmp_path):
    """TRL's log_completions: each step's B x G rows (prompt, completion, per-function rewards, advantage) in
    completions.jsonl; lines a killed run wrote after its last checkpoint are dropped on resume."""
    import json

    args = fast_args(tmp_path, "--model.init_args.log_completions", "true", "--data.init_args.batch_size", "2",
                     "--model.init_args.num_generations", "4",
                     "--trainer.callbacks.every_n_train_steps", "1")  # fmt: skip
    main(["fit", *args, "--trainer.max_steps", "2", "--model.init_args.validate_at_start", "false",
          "--model.init_args.validate_at_end", "false"])  # fmt: skip
    (path,) = tmp_path.glob("**/completions.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1] * 8 + [2] * 8
    assert set(rows[0]) == {"step", "rank", "prompt", "completion", "reward", "rewards", "advantage"}
    assert set(rows[0]["rewards"]) == {"accuracy_reward", "format_reward"} and "User:" in rows[0]["prompt"]
    # a killed run had written step 3's rows (and half a line) after the step-2 checkpoint
    with open(path, "a") as handle:
        handle.write(json.dumps({**rows[0], "step": 3, "completion": "STALE"}) + "\n" + '{"step": 3, "pro')
    main(["fit", *args, "--trainer.max_steps", "4", "--ckpt_path", "last", "--model.init_args.validate_at_start",
          "false", "--model.init_args.validate_at_end", "false"])  # fmt: skip
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1] * 8 + [2] * 8 + [3] * 8 + [4] * 8
    assert "STALE" not in {r["completion"] for r in rows}


def _dynamic_args(tmp_path, cap="6", *extra):
    return fast_args(tmp_path, "--model.init_args.rewards", "{helpers.rewards.signal_on_even_answers: 1.0}",
                     "--data.init_args.batch_size", "4", "--model.init_args.num_generations", "4",
                     "--model.init_args.max_num_gen_batches", cap, "--trainer.log_every_n_steps", "1",
                     *extra)  # fmt: skip


def _logged(tmp_path) -> list[dict]:
    rows = []
    for path in sorted(tmp_path.glob("**/metrics.csv")):
        with open(path) as handle:
            rows += [r for r in csv.DictReader(handle) if r.get("train/dynamic_sampling/gen_batches")]
    return rows


@pytest.mark.slow
def test_dynamic_sampling_trains_only_groups_with_signal(tmp_path):
    main(["fit", *_dynamic_args(tmp_path), "--trainer.max_steps", "4", "--model.init_args.validate_at_start",
          "false", "--model.init_args.validate_at_end", "false"])  # fmt: skip
    rows = _logged(tmp_path)
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert all(float(r["train/zero_std_groups"]) == 0.0 for r in rows)  # every trained group carries signal
    assert sum(float(r["train/dynamic_sampling/dropped_groups"]) for r in rows) > 0  # and some were dropped
    assert any(float(r["train/dynamic_sampling/gen_batches"]) > 1 for r in rows)  # by drawing more prompts
    assert all(float(r["train/dynamic_sampling/cap_hits"]) == 0 for r in rows)


@pytest.mark.slow
def test_dynamic_sampling_cap_fills_the_step_and_counts_it(tmp_path, caplog):
    main(["fit", *_dynamic_args(tmp_path, "1"), "--trainer.max_steps", "2", "--model.init_args.validate_at_start",
          "false", "--model.init_args.validate_at_end", "false"])  # fmt: skip
    rows = _logged(tmp_path)
    assert [float(r["train/dynamic_sampling/gen_batches"]) for r in rows] == [1.0, 1.0]
    assert float(rows[-1]["train/dynamic_sampling/cap_hits"]) >= 1  # odd-answer groups had to stay in


@pytest.mark.slow
def test_dynamic_sampling_resumes_exactly(tmp_path):
    """4 steps straight, and 2 then --ckpt_path last to 4: the same rewards at every step."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    no_eval = ["--model.init_args.validate_at_start", "false", "--model.init_args.validate_at_end", "false"]
    every_step = ["--trainer.callbacks.every_n_train_steps", "1"]
    main(["fit", *_dynamic_args(straight, "6", *every_step), "--trainer.max_steps", "4", *no_eval])
    main(["fit", *_dynamic_args(resumed, "6", *every_step), "--trainer.max_steps", "2", *no_eval])
    main(["fit", *_dynamic_args(resumed, "6", *every_step), "--trainer.max_steps", "4", "--ckpt_path", "last",
          *no_eval])  # fmt: skip
    keys = ("train/reward", "train/dynamic_sampling/gen_batches", "train/dynamic_sampling/dropped_groups")
    first = {int(r["step"]): [r[k] for k in keys] for r in _logged(straight)}
    second = {int(r["step"]): [r[k] for k in keys] for r in _logged(resumed)}
    assert sorted(first) == sorted(second) == [1, 2, 3, 4]
    assert first == second


def test_wandb_tables_are_read_from_the_completions_file(tmp_path):
    """With log_completions and a W&B logger, the table of a step is the file's lines of that step (one column
    per reward function); torn lines are skipped. The logger here records instead of uploading."""
    import json
    from types import SimpleNamespace

    from lightning.pytorch.loggers import WandbLogger

    from r1_lightning.callbacks.completion_log import CompletionLogCallback, completions_table

    class RecordingWandb(WandbLogger):
        def __init__(self) -> None:
            self.tables: list[tuple] = []

        def log_text(self, key, columns=None, data=None, dataframe=None, step=None) -> None:
            self.tables.append((key, columns, data, step))

    path = tmp_path / "completions.jsonl"
    lines = [
        {"step": s, "rank": 0, "prompt": "p", "completion": f"c{s}{i}", "reward": 1.0,
         "rewards": {"accuracy_reward": 1.0, "format_reward": None}, "advantage": 0.5}
        for s in (1, 2) for i in range(2)
    ]  # fmt: skip
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"step": 2, "torn')
    columns, rows = completions_table(path, step=2)
    assert columns == [
        "step", "rank", "prompt", "completion", "reward", "accuracy_reward", "format_reward", "advantage"
    ]  # fmt: skip
    assert rows == [[2, 0, "p", "c20", 1.0, 1.0, None, 0.5], [2, 0, "p", "c21", 1.0, 1.0, None, 0.5]]
    assert len(completions_table(path)[1]) == 4

    logger = RecordingWandb()
    callback = CompletionLogCallback(path=str(path), table_every_n_steps=2)
    trainer = SimpleNamespace(loggers=[logger], global_step=2)
    callback._log_table(trainer, path)
    ((key, logged_columns, data, step),) = logger.tables
    assert (key, logged_columns, data, step) == ("completions", columns, rows, 2)
