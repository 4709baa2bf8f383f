"""Asynchronous rollouts with a staleness bound (``max_staleness``, TRL's name; veRL's ``staleness_threshold``;
the default of prime-rl, AReaL, PipelineRL).

With ``max_staleness: k`` (k >= ``num_iterations``), the rollout of batch ``b + a`` (``a = k // num_iterations``
batches ahead) is *sampled* at the start of step ``b``, from the weights as they are then, and its rewards are
*scored in a worker thread* while step ``b`` trains (one thread per batch in flight, so with k >= 2 the
waits of consecutive batches overlap each other as well). Step ``b + a`` trains on it ``a * num_iterations <= k``
optimizer steps later. Reward scoring is where an R1 step waits on I/O (a code sandbox, a remote verifier,
a reward-model server), so that wait leaves the critical path; decoding stays on the trainer's device,
between updates, because on one device overlapping two compute jobs gains nothing.

What makes it correct off-policy: the loss's ``old`` log-probs are the *behaviour* policy's, computed by a
no-grad forward with the weights that sampled, right after sampling (as veRL recomputes them), so the
clipped ratio ``pi_theta / pi_behaviour`` corrects for the lag (PPO's own off-policy correction), the
sampler-vs-trainer gap stays with the mismatch/TIS machinery (``vllm_importance_sampling_mode``,
``tis_cap``), and ``off_policy_mask_threshold`` drops the stalest negative sequences as in DeepSeek-V3.2.
``train/staleness/{mean,max}`` is logged each step (never above k).

What stays exact:

- The prompts are the data module's stream, read ahead (``PromptDataModule.prompt_batches``): step ``b``
  trains on batch ``b`` as the synchronous loop does, checked against the batch Lightning hands it.
- Sampling order is unchanged (batch ``b`` is still sampled before ``b + 1``), so with weights that do not
  change (``lr: 0``) the rollouts and losses equal ``max_staleness: 0``'s (a test).
- A checkpoint saves the in-flight rollouts of every rank (their scores waited for), with the random
  generators' state after the last sampling, so ``--ckpt_path last`` continues exactly (a test). A
  checkpoint of another number of ranks drops them with a warning; they are sampled again, fresh.
- No batch past ``trainer.max_steps`` is sampled.

Reward functions are therefore called from worker threads, up to ``k // num_iterations + 1`` batches at once
(and alongside validation): they must be safe to call concurrently, as a pure function or an HTTP client is.
The built-in ones are; the shared pool of time-limited worker processes serves one batch at a time.

Not combined with dynamic sampling (``max_num_gen_batches``), whose top-up draws must be scored before the
step can go on: one clear error. With vLLM on separate devices see the README ("Asynchronous rollouts").
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NamedTuple

import torch
from lightning.pytorch.utilities import rank_zero_warn

from r1_lightning.generation.rollout import Generation, Rollout, repeat_batch
from r1_lightning.training.dynamic_sampling import Scored
from r1_lightning.training.rollout_making import Sampled

CHECKPOINT_KEY = "async_rollouts"


class InFlight(NamedTuple):
    """A rollout sampled ahead of the step that trains it."""

    batch_index: int  # which batch of the prompt stream
    version: int  # global_step (optimizer steps) of the weights that sampled it
    sampled: Sampled
    behaviour: torch.Tensor  # [N, L] the sampling weights' log-probs
    scores: Future[Scored]


def check_async_settings(hp: dict[str, Any]) -> None:
    """One clear line for settings asynchronous rollouts cannot run with."""
    k, mu = hp["max_staleness"], hp["num_iterations"]
    if k < 0:
        raise ValueError(f"`max_staleness` must be >= 0 (0 = synchronous rollouts), got {k}")
    if k and k < mu:
        raise ValueError(
            f"`max_staleness: {k}` is below `num_iterations: {mu}`: a rollout sampled one batch ahead is "
            f"{mu} optimizer steps old when it trains; set max_staleness to {mu} (or a multiple), or to 0"
        )
    if k and hp["max_num_gen_batches"]:
        raise ValueError(
            "`max_staleness` and `max_num_gen_batches` (dynamic sampling) cannot be combined: dynamic sampling "
            "scores each draw before the step can go on; set one of them to 0"
        )
    if k and hp.get("environment_factory"):
        raise ValueError(
            "`max_staleness` and `environment_factory` cannot be combined yet: a checkpoint cannot hold the in-flight "
            "rollouts' environment objects; set max_staleness: 0"
        )


class AsyncRollouts:
    """GRPOModule's queue of in-flight rollouts (module docstring). Needs ``sample``, ``score``,
    ``finish_rollout``, ``plan_micro_batches``, ``policy_logprobs``, ``reward_events``, ``hparams``, ``trainer``."""

    _in_flight: deque[InFlight] | None = None
    _scorer: ThreadPoolExecutor | None = None
    _prompts: Any = None  # (next batch index, iterator over the prompt stream from there)
    _restored: list[list[dict[str, Any]]] | None = None

    def next_async_rollout(self, batch: dict[str, list]) -> Rollout:
        """The rollout of the batch Lightning handed this step, sampled up to ``max_staleness`` steps ago;
        first samples the batch ``ahead`` steps on and starts scoring it in the worker thread."""
        started, queue = time.perf_counter(), self._queue()
        index = self.trainer.datamodule.batches_consumed - 1  # the batch of this step
        ahead = self.hparams.max_staleness // self.hparams.num_iterations
        last_batch = _batch_count(self.trainer.max_steps, self.hparams.num_iterations)
        next_index = queue[-1].batch_index + 1 if queue else index
        while next_index <= index + ahead and (last_batch is None or next_index < last_batch):
            queue.append(self._sample_ahead(next_index, (next_index - index) * self.hparams.num_iterations))
            next_index += 1
        entry = queue.popleft()
        if entry.batch_index != index or list(entry.sampled.batch["prompt"]) != list(batch["prompt"]):
            raise RuntimeError(
                f"asynchronous rollouts: the queued rollout is of batch {entry.batch_index} but step {index + 1} "
                "got another batch; the data module must give PromptDataModule's deterministic prompt stream"
            )
        waiting = time.perf_counter()
        scored = entry.scores.result()  # (re-raises a reward function's error here, on the main thread)
        waited = time.perf_counter() - waiting
        self.reward_events.update(scored.events)
        staleness = float(self.trainer.global_step - entry.version)
        # train/time/reward is the time this step waited on the scores; the rest of their time overlapped
        stats = {
            "staleness/mean": staleness,
            "staleness/max": staleness,
            "time/reward_overlapped": max(scored.reward_seconds - waited, 0.0),
        }
        return self.finish_rollout(scored._replace(reward_seconds=waited), started, stats, entry.behaviour)

    def _queue(self) -> deque[InFlight]:
        if self._in_flight is None:
            self._in_flight = deque()
            # one thread per batch that can be in flight, so the waits of consecutive batches overlap too
            ahead = self.hparams.max_staleness // self.hparams.num_iterations
            self._scorer = ThreadPoolExecutor(max_workers=ahead + 1, thread_name_prefix="r1-reward-scoring")
            if self._restored is not None:
                self._restore_in_flight(self._restored)
                self._restored = None
        return self._in_flight

    def _sample_ahead(self, index: int, steps_ahead: int) -> InFlight:
        """Sample batch ``index`` now (current weights), its behaviour log-probs, and submit its scoring."""
        records = self._prompt_batch(index)
        sampled = self.sample(records)
        behaviour = self.policy_logprobs(sampled.generation, self.plan_micro_batches(sampled.generation))
        step = self.trainer.global_step + steps_ahead  # the step it will train at: what rewards see
        assert self._scorer is not None
        scores = self._scorer.submit(self.score, sampled, step)
        return InFlight(index, self.trainer.global_step, sampled, behaviour, scores)

    def _prompt_batch(self, index: int) -> dict[str, list]:
        if self._prompts is None or self._prompts[0] != index:
            datamodule = self.trainer.datamodule
            if not hasattr(datamodule, "prompt_batches"):
                raise TypeError(
                    f"`max_staleness` reads the prompt stream ahead, which {type(datamodule).__name__} does not "
                    "offer (`prompt_batches(start)`); use r1_lightning.data.PromptDataModule or set max_staleness: 0"
                )
            self._prompts = (index, datamodule.prompt_batches(index))
        start, batches = self._prompts
        self._prompts = (start + 1, batches)
        return next(batches)

    def close_async_rollouts(self) -> None:
        """Stop the scoring thread (end of fit); rollouts still in flight are dropped."""
        if self._scorer is not None:
            self._scorer.shutdown(wait=True, cancel_futures=True)
        self._in_flight, self._scorer, self._prompts = None, None, None

    # ------------------------------------------------------------------ checkpoints
    def save_async_rollouts(self, checkpoint: dict[str, Any]) -> None:
        """Every rank's in-flight rollouts into the checkpoint (a collective: call it on every rank)."""
        if not self.hparams.max_staleness:
            return
        mine = [_as_plain(entry) for entry in (self._in_flight or ())]
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            per_rank: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(per_rank, mine)
        else:
            per_rank = [mine]
        checkpoint[CHECKPOINT_KEY] = per_rank

    def load_async_rollouts(self, checkpoint: dict[str, Any]) -> None:
        self._restored = checkpoint.get(CHECKPOINT_KEY)

    def _restore_in_flight(self, per_rank: list[list[dict[str, Any]]]) -> None:
        world, rank = self.trainer.world_size, self.trainer.global_rank
        if len(per_rank) != world:
            rank_zero_warn(
                f"the checkpoint holds the in-flight rollouts of {len(per_rank)} rank(s) and this run has {world}: "
                "they are dropped and sampled again from the current weights"
            )
            return
        device = self.policy.device if hasattr(self.policy, "device") else torch.device("cpu")
        for plain in per_rank[rank]:
            assert self._in_flight is not None
            self._in_flight.append(_from_plain(plain, self.hparams.num_generations, device))


def _batch_count(max_steps: int, num_iterations: int) -> int | None:
    """Batches a run trains (``max_steps`` counts optimizer steps); None when unbounded."""
    return None if max_steps is None or max_steps < 0 else -(-max_steps // num_iterations)


def _as_plain(entry: InFlight) -> dict[str, Any]:
    """An in-flight rollout as plain types and tensors (checkpoints load with ``weights_only=True``)."""
    scored, generation = entry.scores.result(), entry.sampled.generation
    return {
        "batch_index": entry.batch_index,
        "version": entry.version,
        "batch": entry.sampled.batch,
        "generation": {k: v.cpu() if torch.is_tensor(v) else v for k, v in generation._asdict().items()},
        "behaviour": entry.behaviour.cpu(),
        "rewards": scored.rewards.cpu(),
        "per_fn": scored.per_fn,
        "events": scored.events,
        "reward_seconds": scored.reward_seconds,
    }


def _from_plain(plain: dict[str, Any], group_size: int, device: torch.device) -> InFlight:
    fields = {k: v.to(device) if torch.is_tensor(v) else v for k, v in plain["generation"].items()}
    generation = Generation(**fields)
    prompts, columns = repeat_batch(plain["batch"], group_size)
    sampled = Sampled(plain["batch"], prompts, columns, generation)
    scores: Future[Scored] = Future()
    scores.set_result(
        Scored(plain["batch"], generation, plain["rewards"].to(device), plain["per_fn"], plain["events"],
               plain["reward_seconds"])
    )  # fmt: skip
    return InFlight(plain["batch_index"], plain["version"], sampled, plain["behaviour"].to(device), scores)
