"""GRPO's held-out evaluation (pass@1 over k samples, maj@k, format rate, length), as a mixin of
``GRPOModule``: inside Lightning's validation loop, before the first step, after the last, and the
validation a resumed checkpoint preceded."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics import MeanMetric, SumMetric
from typing_extensions import override

from r1_lightning.evaluation.behaviour import PerDifficulty
from r1_lightning.evaluation.scoring import score_samples
from r1_lightning.generation.rollout import isolated_rng, repeat_batch
from r1_lightning.rewards.contract import RewardState

#: the record column per-difficulty metrics group by
GROUP_COLUMN = "difficulty"


def validation_due(trainer: L.Trainer, steps_per_batch: int = 1) -> bool:
    """Whether the step-interval validation (``val_check_interval: N`` with
    ``check_val_every_n_epoch: null``) falls on the trainer's current global step.

    Lightning counts that interval in training batches; one GRPO batch makes ``num_iterations``
    optimizer steps (``steps_per_batch``), so the batch count is the global step divided by it."""
    interval = getattr(trainer, "val_check_batch", None)
    if trainer.check_val_every_n_epoch is not None or not isinstance(interval, int) or interval <= 0:
        return False
    if not trainer.enable_validation or trainer.limit_val_batches == 0:
        return False
    return (trainer.global_step // steps_per_batch) % interval == 0


class GRPOEvaluation:
    """Evaluation methods of ``GRPOModule`` (which owns the metrics, ``val_reward_fn`` and sampling)."""

    hparams: Any
    global_step: int
    trainer: L.Trainer
    device: torch.device
    _trainer: Any

    def _is_sharded(self) -> bool: ...

    def init_val_metrics(self) -> None:
        """The held-out metrics (torchmetrics, so their states are summed over ranks when computed)."""
        self.val_pass1, self.val_majk = MeanMetric(), MeanMetric()
        self.val_format, self.val_length = MeanMetric(), MeanMetric()
        self.val_problems = SumMetric()  # held-out problems scored
        # held-out samples that called a tool (correct, all) and that did not (correct, all)
        self.val_tool_tally = torch.nn.ModuleList([SumMetric() for _ in range(4)])
        self.eval_history: list[tuple[int, dict[str, float]]] = []

    def evaluate_batch(self, batch: dict[str, list], batch_index: int = 0) -> None:
        """Sample ``val_num_samples`` completions per prompt and update pass@1, maj@k, format, length.

        Sampling draws from a generator seeded by (step, batch) and leaves the training one untouched,
        so an evaluation is reproducible and a run's training steps do not depend on when it evaluated
        (which exact resume needs: a resumed run does not repeat the evaluation of its restart step).

        Under data parallelism every rank iterates the same held-out batches and evaluates batch ``i``
        only on rank ``i % world_size``: each problem is evaluated once, with the same seed and batch as
        in a 1-rank run, and the metrics are summed over ranks when computed (torchmetrics' sync). With
        sharded weights (FSDP) every forward is a collective, so every rank samples every batch (the ranks
        must run the same forwards) and only the batch's owner scores it: still once per problem.
        """
        world = self.trainer.world_size if self._trainer is not None else 1
        owner = world == 1 or batch_index % world == self.trainer.global_rank
        if not owner and not self._is_sharded():
            return
        k = self.hparams.val_num_samples
        prompts, columns = repeat_batch(batch, k)
        with isolated_rng(self.device, seed=1_000_003 * self.global_step + batch_index):
            generation = self.generate(prompts, self.val_sampling, group_size=k)
        if not owner:
            return
        state = RewardState(self.global_step, self.trainer.max_steps if self._trainer else -1, 0.0)
        scored = score_samples(generation, prompts, columns, k, self.val_reward_fn, state, self.tokenizer)
        lengths = torch.tensor(scored.lengths)
        for level, p1, length in zip(
            batch.get(GROUP_COLUMN) or [], scored.pass1, lengths.view(-1, k).mean(1), strict=False
        ):
            self._by_difficulty().add(level, 1, length=float(length), **{"pass@1": p1})
        # per prompt (pass@1, maj@k) and per sample (format, length): a short last batch weighs what it holds
        self.val_problems.update(len(scored.pass1))
        self.val_pass1.update(torch.tensor(scored.pass1))
        self.val_majk.update(torch.tensor(scored.majority))
        self.val_format.update(torch.tensor(scored.formats))
        self.val_length.update(lengths)
        if generation.tool_calls is not None:  # pass@1 of the samples that called a tool, and of those that did not
            used = torch.tensor([bool(calls) for calls in generation.tool_calls])
            correct = torch.tensor(scored.correct, dtype=torch.float32)
            tallies = (correct[used].sum(), used.sum(), correct[~used].sum(), (~used).sum())
            for metric, value in zip(self.val_tool_tally, tallies, strict=True):
                metric.update(value.float())

    def compute_val_metrics(self) -> dict[str, float]:
        k = self.hparams.val_num_samples
        metrics = {
            "val/pass@1": self.val_pass1.compute().item(),
            f"val/maj@{k}": self.val_majk.compute().item(),
            "val/format": self.val_format.compute().item(),
            "val/completion_length": self.val_length.compute().item(),
            "val/problems": self.val_problems.compute().item(),
        }
        if self.toolbox is not None:
            hits_with, with_tools, hits_without, without_tools = (m.compute().item() for m in self.val_tool_tally)
            metrics["val/tool_use_rate"] = with_tools / max(with_tools + without_tools, 1.0)
            metrics["val/pass@1/with_tools"] = hits_with / max(with_tools, 1.0)
            metrics["val/pass@1/without_tools"] = hits_without / max(without_tools, 1.0)
        for metric in self._val_metrics():
            metric.reset()
        metrics.update(self._difficulty_metrics())
        self.eval_history.append((self.global_step, metrics))
        return metrics

    def _val_metrics(self) -> tuple[Any, ...]:
        """The held-out metrics; torchmetrics sums their states over ranks when they are computed."""
        return self.val_pass1, self.val_majk, self.val_format, self.val_length, self.val_problems, *self.val_tool_tally

    def _by_difficulty(self) -> PerDifficulty:
        if not hasattr(self, "_val_by_difficulty"):
            self._val_by_difficulty = PerDifficulty({"pass@1": "val/pass@1", "length": "val/completion_length"})
        return self._val_by_difficulty

    def _difficulty_metrics(self) -> dict[str, float]:
        """``val/pass@1/difficulty_<d>`` and ``val/completion_length/difficulty_<d>`` when the held-out
        records have a ``difficulty`` column (e.g. ``CarryAdditionTask``): does RL spend more tokens on
        harder problems? Under DDP the ranks' sums are gathered first."""
        import torch.distributed as dist

        tally = self._by_difficulty()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, tally.sums)
            tally.sums = {}
            tally.merge(gathered)
        return tally.pop_means()

    @override
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.evaluate_batch(batch, batch_idx)

    @override
    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            for metric in self._val_metrics():
                metric.reset()
            self._by_difficulty().pop_means()
            return
        metrics = self.compute_val_metrics()
        self.log_dict(metrics, sync_dist=False, batch_size=1)  # already aggregated over the whole set
        rank_zero_info(f"step {self.global_step}: " + ", ".join(f"{k}={v:.3f}" for k, v in metrics.items()))

    def run_evaluation(self, log_step: int | None = None, epoch: int | None = None) -> dict[str, float]:
        """Evaluate outside Lightning's validation loop (start and end of fit, and the validation a
        resumed checkpoint preceded) and log the result at ``log_step`` (default: the global step)."""
        datamodule = self.trainer.datamodule
        if datamodule is None:
            return {}
        for index, batch in enumerate(datamodule.val_dataloader()):
            self.evaluate_batch(batch, index)
        metrics = self.compute_val_metrics()
        logged = metrics if epoch is None else {"epoch": epoch, **metrics}
        for logger in self.trainer.loggers:
            logger.log_metrics(logged, step=self.global_step if log_step is None else log_step)
        rank_zero_info(f"step {self.global_step}: " + ", ".join(f"{k}={v:.3f}" for k, v in metrics.items()))
        return metrics
