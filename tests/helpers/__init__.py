"""Shared test helpers (not tests): paths, a short-run command line, rewards and probe callbacks that
runs name by dotted path (``helpers.rewards.varied_reward``; ``tests/`` is on the path)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "configs" / "r1_zero_tiny.yaml")
#: GRPO without the held-out evaluations before the first step and after the last (short test runs)
NO_EVAL = ["--model.init_args.validate_at_start", "false", "--model.init_args.validate_at_end", "false"]


def fast_args(tmp_path, *extra: str, config: str = TINY, steps: int | None = None) -> list[str]:
    """A shipped config (default: the tiny one) on a random-init model, writing only under ``tmp_path``.

    ``steps``: a run of that many optimizer steps, without the evaluation before the first one.
    """
    short = [] if steps is None else ["--trainer.max_steps", str(steps), *NO_EVAL]
    return [
        "--config", str(config), "--model.init_args.model", "tiny:random",
        "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--model.init_args.export_dir", str(tmp_path / "hf"), *short, *extra,
    ]  # fmt: skip
