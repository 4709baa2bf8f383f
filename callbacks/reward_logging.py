"""RewardLoggingCallback: rollout and optimisation statistics to any Lightning logger (+ W&B tables)."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torchmetrics import MeanMetric
from typing_extensions import override

from r1_lightning.evaluation.behaviour import REFLECTIVE_WORDS, HackingAlarms, PerDifficulty, reflective_word_counts

ALARM_STATE = "_alarms"  # key of the alarms' state among the window metrics in a checkpoint


def crossed_multiple(before: int, after: int, every: int) -> bool:
    """Whether the steps ``(before, after]`` a batch moved through hold a multiple of ``every``: with
    ``num_iterations`` = mu > 1 one batch makes mu optimizer steps, and a ``step % every == 0`` test on the
    step a batch ends at would skip most multiples (mu = 3, every = 2: steps 3, 6, 9 -> only 6).

    >>> crossed_multiple(0, 3, 2), crossed_multiple(3, 6, 4), crossed_multiple(4, 7, 4), crossed_multiple(0, 1, 1)
    (True, True, False, True)
    """
    return every > 0 and after // every > before // every


def counters(trainer: L.Trainer, pl_module: Any = None) -> dict[str, float]:
    """Running totals of things skipped or cut short, so none goes unnoticed, over the whole run and all
    ranks: prompts over the length limit, rows skipped per reason, this module's reward calls that timed
    out (per function) and its sandboxed code runs by outcome (``GRPOModule.reward_events``).

    Under data parallelism each rank counts its own prompts and rollouts (summed over ranks), while every
    rank reads the whole data file (its skipped lines are the same on each: the largest count is the
    file's). A collective: every rank calls it at the same steps.
    """
    events = getattr(pl_module, "reward_events", None) or {}
    summed = {f"train/{key}": float(n) for key, n in events.items()}
    datamodule = trainer.datamodule
    long_prompts = getattr(datamodule, "skipped_long_prompts", None) if datamodule else None
    if long_prompts is not None:
        summed["train/skipped_long_prompts"] = float(long_prompts)
        if long_prompts:
            summed["train/skipped_rows/prompt_too_long"] = float(long_prompts)
    source_rows = getattr(getattr(datamodule, "source", None), "skipped_rows", None) or {}
    file_level = {f"train/skipped_rows/{reason}": float(n) for reason, n in source_rows.items()}
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, (summed, file_level))
        summed, file_level = {}, {}
        for rank_summed, rank_file_level in gathered:
            for key, n in rank_summed.items():
                summed[key] = summed.get(key, 0.0) + n
            for key, n in rank_file_level.items():
                file_level[key] = max(file_level.get(key, 0.0), n)
    return {**file_level, **summed}


class RewardLoggingCallback(L.Callback):
    """Logs, every ``trainer.log_every_n_steps`` steps, means over the steps since the last log:

    ``train/reward`` (weighted total), ``train/reward/<fn>`` per reward function, ``train/reward_std``,
    ``train/kl``, ``train/clip_ratio``, ``train/entropy``, ``train/loss``, ``train/completion_length``,
    ``train/truncated_fraction``, ``train/zero_std_groups`` (groups whose rewards are all equal: no
    signal), ``train/skipped_long_prompts``, ``train/skipped_rows/<reason>``, ``train/reward_timeouts/<fn>``
    and ``train/code_runs/<outcome>`` (running totals), ``train/rollout_tokens_per_s``,
    ``train/step_seconds`` (rollout + rewards + update, with the parts as ``train/time/rollout``,
    ``train/time/reward``, ``train/time/train``), ``train/lr``. Means are torchmetrics ``MeanMetric`` s,
    so under DDP they are averaged over ranks too. With a W&B logger, a table of sample completions is
    logged every ``table_every_n_steps`` steps.

    R1's behaviours: ``train/completion_length`` (response length over training),
    ``train/reflective_words`` (mean count of reflective words per completion: "wait", "mistake",
    "however", ...), ``train/reflection_rate`` (share of completions with at least one) and
    ``train/cot_language/<code>`` (the language mix of the chains of thought: each candidate language's
    share of their words, read by lingua on each logging step's batch, not on every step, since
    detection costs more than the other metrics). Alarms
    (``r1_lightning.evaluation.behaviour.HackingAlarms``) warn in the log, and log ``train/alarm/<name>`` = 1 while
    active, when format reward rises as accuracy falls, when length collapses or explodes, or when
    truncation dominates.

    Args:
        table_every_n_steps: how often to log sample completions to W&B (0 = never).
        table_rows: completions per table.
        reflective_words: the words counted (default: the ones DeepSeek-R1 tracks).
        language_mix: candidate languages (ISO 639-1) of the chain-of-thought language mix; ``[]`` turns
            the metric off (default: the ten of the language reward).
        alarms: watch the curves for reward hacking and collapse.
    """

    def __init__(
        self,
        table_every_n_steps: int = 50,
        table_rows: int = 8,
        reflective_words: list[str] | None = None,
        language_mix: list[str] | None = None,
        alarms: bool = True,
    ) -> None:
        from r1_lightning.rewards.language import DEFAULT_CANDIDATES

        self.language_mix = tuple(DEFAULT_CANDIDATES if language_mix is None else language_mix)
        self.table_every_n_steps, self.table_rows = table_every_n_steps, table_rows
        self.reflective_words = tuple(REFLECTIVE_WORDS if reflective_words is None else reflective_words)
        self.alarms = HackingAlarms() if alarms else None
        self._difficulty = PerDifficulty({"length": "train/completion_length", "accuracy": "train/accuracy"})
        self.metrics: dict[str, MeanMetric] = {}
        self._step_started = 0.0
        self._device = torch.device("cpu")

    def _update(self, name: str, value: float | torch.Tensor, weight: float = 1.0) -> None:
        # Metrics live on the module's device: their cross-rank sync is a collective (NCCL wants CUDA).
        if name not in self.metrics:
            self.metrics[name] = MeanMetric(nan_strategy="ignore").to(self._device)
        self.metrics[name].update(torch.as_tensor(value, dtype=torch.float32, device=self._device), weight)

    @override
    def state_dict(self) -> dict[str, Any]:
        # The running means of the current window, so a resumed run logs the same window means.
        state: dict[str, Any] = {
            name: {"mean_value": m.mean_value.cpu(), "weight": m.weight.cpu()} for name, m in self.metrics.items()
        }
        if self.alarms is not None:
            state[ALARM_STATE] = self.alarms.state()
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.metrics = {}
        state_dict = dict(state_dict)
        alarm_state = state_dict.pop(ALARM_STATE, None)
        if alarm_state is not None and self.alarms is not None:
            self.alarms.restore(alarm_state)
        for name, state in state_dict.items():
            metric = MeanMetric(nan_strategy="ignore")
            metric.mean_value, metric.weight = state["mean_value"].clone(), state["weight"].clone()
            metric._update_count = 1  # so compute() does not warn that update() was never called
            self.metrics[name] = metric

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        """The run's end summary of the rows its data skipped, per reason (the first few were shown with
        file and line when they were read); the totals are also logged at the last step."""
        totals = counters(trainer, pl_module)  # a collective: every rank calls on_train_end
        skipped = {k.rsplit("/", 1)[-1]: int(n) for k, n in totals.items() if k.startswith("train/skipped_rows/")}
        if not skipped:
            return
        for logger in trainer.loggers:
            logger.log_metrics({k: v for k, v in totals.items() if "skipped" in k}, trainer.global_step)
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items()))
        rank_zero_info(f"skipped data rows over the run: {sum(skipped.values())} ({reasons})")

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._step_started = time.perf_counter()
        self._step_before = trainer.global_step
        self._device = pl_module.device
        for name, metric in self.metrics.items():
            self.metrics[name] = metric.to(self._device)

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        rollout = batch.get("rollout") if isinstance(batch, dict) else None
        if rollout is None:
            return
        gen = rollout.generation
        lengths = gen.trained_mask().sum(1).float()  # sampled tokens (a tool's inserted response not counted)
        self._update("train/reward", rollout.rewards.mean())
        self._update("train/reward_std", rollout.rewards.view(-1, rollout.group_size).std(1, correction=0).mean())
        for name, scores in rollout.reward_scores.items():
            valid = [s for s in scores if s is not None]
            if valid:
                self._update(f"train/reward/{name}", sum(valid) / len(valid))
        grouped = rollout.rewards.view(-1, rollout.group_size)
        self._update("train/zero_std_groups", (grouped.max(1).values == grouped.min(1).values).float().mean())
        self._update("train/completion_length", lengths.mean())
        reflective = reflective_word_counts(gen.texts, self.reflective_words)
        self._update("train/reflective_words", sum(reflective) / max(len(reflective), 1))
        self._update("train/reflection_rate", sum(c > 0 for c in reflective) / max(len(reflective), 1))
        self._update("train/truncated_fraction", gen.truncated.float().mean())
        self._by_difficulty(batch, rollout, lengths)
        self._update("train/rollout_tokens_per_s", lengths.sum() / max(gen.seconds, 1e-9))
        # A whole step: the rollout (sampling, the extra log-prob forwards), the rewards, the update; each
        # part is logged too (the rollout runs in another callback's batch-start hook, before this one's).
        parts = {"rollout": rollout.seconds.get("rollout", 0.0), "reward": rollout.seconds.get("reward", 0.0)}
        parts["train"] = float((outputs or {}).get("train_seconds", time.perf_counter() - self._step_started))
        for part, seconds in parts.items():
            self._update(f"train/time/{part}", seconds)
        self._update("train/step_seconds", sum(parts.values()))
        for key, value in (outputs or {}).items():
            if isinstance(value, (int, float)) or (isinstance(value, torch.Tensor) and value.numel() == 1):
                self._update(f"train/{key}", value)
        step = trainer.global_step
        pl_module.log("reward", rollout.rewards.mean(), prog_bar=True, on_step=True, logger=False)
        before = getattr(self, "_step_before", step - 1)
        if crossed_multiple(before, step, max(trainer.log_every_n_steps, 1)) or before == 0:
            if self.language_mix:
                from r1_lightning.rewards.language import language_mix

                # the same keys on every rank and step (zeros included): compute() below is a collective
                for code, share in language_mix(gen.texts, self.language_mix).items():
                    self._update(f"train/cot_language/{code}", share)
            # compute() is a collective under DDP: every rank reaches it at the same steps.
            values = {name: float(metric.compute()) for name, metric in self.metrics.items()}
            values.update(counters(trainer, pl_module))  # running totals, not window means
            for metric in self.metrics.values():
                metric.reset()
            if self.alarms is not None:
                for warning in self.alarms.update(values):
                    rank_zero_warn(f"step {step}: {warning}")
                values.update({f"train/alarm/{name}": 1.0 for name in self.alarms.active})
            # per difficulty: this rank's rollouts only (not reduced across ranks: the set of difficulties a
            # rank drew differs, and a collective needs the same keys everywhere)
            values.update(self._difficulty.pop_means())
            for logger in trainer.loggers:  # straight to the loggers: these are already window means
                logger.log_metrics(values, step=step)
        # with log_completions the W&B table is read from completions.jsonl (CompletionLogCallback) instead
        logged_elsewhere = bool(getattr(pl_module, "hparams", {}).get("log_completions"))
        if (
            self.table_every_n_steps
            and not logged_elsewhere
            and crossed_multiple(before, step, self.table_every_n_steps)
        ):
            self._log_table(trainer, batch, rollout, step)

    def _by_difficulty(self, batch: Any, rollout: Any, lengths: torch.Tensor) -> None:
        """Window sums of response length and accuracy per ``difficulty`` (when the records have it), logged
        as ``train/completion_length/difficulty_<d>`` and ``train/accuracy/difficulty_<d>``."""
        levels = batch.get("difficulty") if isinstance(batch, dict) else None
        if not levels:
            return
        group = rollout.group_size
        accuracy = rollout.reward_scores.get("accuracy_reward") or [None] * len(lengths)
        for i, level in enumerate(levels):
            rows = slice(i * group, (i + 1) * group)
            hits = sum(float(score or 0.0) for score in accuracy[rows])
            self._difficulty.add(level, group, length=float(lengths[rows].sum()), accuracy=hits)

    def _log_table(self, trainer: L.Trainer, batch: dict, rollout: Any, step: int) -> None:
        from lightning.pytorch.loggers import WandbLogger

        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers or not trainer.is_global_zero:
            return
        group = rollout.group_size
        rows = []
        for i, text in enumerate(rollout.generation.texts[: self.table_rows]):
            rows.append(
                [step, batch["prompt"][i // group], text, float(rollout.rewards[i]), float(rollout.advantages[i])]
            )
        for logger in loggers:
            logger.log_text(
                key="rollouts", columns=["step", "prompt", "completion", "reward", "advantage"], data=rows, step=step
            )
