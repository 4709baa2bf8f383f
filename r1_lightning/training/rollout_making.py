"""GRPOModule's rollouts: sample G completions per prompt, score them, turn rewards into advantages, plan the
micro-batches and compute the log-probs the loss needs besides the policy's own.

A rollout is made in two halves so that asynchronous rollouts (:mod:`r1_lightning.training.async_rollouts`)
can score one batch while another trains: :meth:`RolloutMaking.sample` (decode; the trainer's compute) and
:meth:`RolloutMaking.score` (the reward functions; often I/O: a sandbox, a remote verifier). The synchronous
loop (``max_staleness: 0``) runs both, then :meth:`RolloutMaking.finish_rollout`, in one call.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import torch

from r1_lightning.generation.forward import batched_logprobs
from r1_lightning.generation.rollout import Generation, MicroBatch, Rollout, plan_micro_batches, repeat_batch
from r1_lightning.generation.tools import tool_stats
from r1_lightning.rewards import score_completions
from r1_lightning.rewards.contract import RewardState, generation_reward_inputs
from r1_lightning.rewards.limits import count_reward_events
from r1_lightning.training.dynamic_sampling import Scored, fill_with_signal


class Sampled(NamedTuple):
    """One batch's sampled completions, not yet scored."""

    batch: dict[str, list]  # the B records
    prompts: list[str]  # the B * G rendered prompts, groups contiguous
    columns: dict[str, list]  # the records' columns, each repeated G times
    generation: Generation


class RolloutMaking:
    """Needs ``hparams``, ``sampling``, ``rewards``, ``tokenizer``, ``policy``, ``generate``, ``reference_logprobs``,
    ``rollout_advantages``, ``generation_context``, ``logprob_chunk``, ``trainer``."""

    @property
    def shared_group_size(self) -> int | None:
        """G when forwards share each group's prompt; None when every row runs its own prompt."""
        hp = self.hparams
        # Gradient checkpointing in transformers refuses a key/value cache in training forwards.
        return hp.num_generations if hp.share_prompt_prefix and not hp.gradient_checkpointing else None

    def plan_micro_batches(self, generation: Generation) -> list[MicroBatch]:
        """Micro-batches of a rollout; under DDP/FSDP the same count on every rank (collectives match)."""
        hp = self.hparams
        plans = plan_micro_batches(generation, hp.micro_batch_size, hp.micro_batch_tokens)
        if self._trainer is not None and self.trainer.world_size > 1:
            count = torch.tensor(float(len(plans)), device=generation.input_ids.device)
            most = int(self.trainer.strategy.reduce(count, reduce_op="max"))
            plans = plan_micro_batches(generation, hp.micro_batch_size, hp.micro_batch_tokens, min_count=most)
        return plans

    def policy_logprobs(self, generation: Generation, plans: list[MicroBatch]) -> torch.Tensor:
        """The current policy's log-probs of a rollout, no gradient (the behaviour policy's, when called with
        the weights that sampled it)."""
        with self.generation_context():
            temperature, chunk_size = self.sampling.temperature, self.logprob_chunk
            return batched_logprobs(self.policy, generation, temperature, plans, self.shared_group_size, chunk_size)

    def old_logprobs(self, generation: Generation, plans: list[MicroBatch]) -> torch.Tensor | None:
        """The sampling policy's log-probs, needed only when one rollout feeds several updates (mu > 1)."""
        return None if self.hparams.num_iterations == 1 else self.policy_logprobs(generation, plans)

    def make_rollout(self, batch: dict[str, list]) -> Rollout:
        """One GRPO rollout for a batch of B prompt records, read top to bottom: sample G completions per
        prompt, score them (TRL's reward contract, ``rewards/contract.py``), with dynamic sampling keep only
        groups with reward signal (drawing more), group-relative advantages (eq. 3), the micro-batch plan,
        and the log-probs the loss needs besides the policy's own. With ``max_staleness`` > 0 the rollout
        comes from the asynchronous queue instead (sampled up to k optimizer steps ago)."""
        if self.hparams.max_staleness:
            return self.next_async_rollout(batch)
        started = time.perf_counter()
        scored, stats = self.sample_and_score(batch), {}
        if self.hparams.max_num_gen_batches:
            scored, stats = fill_with_signal(self, scored, self.hparams.max_num_gen_batches)
            batch.update(scored.batch)  # what the logging callbacks read: the records actually trained on
        return self.finish_rollout(scored, started, stats)

    def finish_rollout(
        self, scored: Scored, started: float, stats: dict[str, float], behaviour: torch.Tensor | None = None
    ) -> Rollout:
        """Advantages, micro-batches, old (``behaviour``: the sampling weights' log-probs, when already
        computed) and reference log-probs of a scored batch."""
        generation, rewards = scored.generation, scored.rewards
        if generation.tool_calls is not None:
            stats = {**stats, **tool_stats(generation.tool_calls)}
        advantages = self.rollout_advantages(rewards, scored.per_fn)
        plans = self.plan_micro_batches(generation)
        old_logprobs = behaviour if behaviour is not None else self.old_logprobs(generation, plans)
        ref_logprobs = self.reference_logprobs(generation, plans)
        # wall time of the rollout's parts: sampling plus the extra log-prob forwards, and the rewards
        seconds = {"rollout": time.perf_counter() - started - scored.reward_seconds, "reward": scored.reward_seconds}
        return Rollout(
            generation, old_logprobs, ref_logprobs, rewards, advantages, scored.per_fn, self.hparams.num_generations,
            plans, scored.events, seconds, stats,
        )  # fmt: skip

    def sample(self, batch: dict[str, list]) -> Sampled:
        """G completions for each of the batch's records (B * G rows, groups contiguous), not yet scored."""
        prompts, columns = repeat_batch(batch, self.hparams.num_generations)
        environments = None
        if self.toolbox is not None and self.toolbox.factory is not None:  # one stateful environment per row
            rows = [{key: values[i] for key, values in columns.items()} for i in range(len(prompts))]
            environments = self.toolbox.environments(rows)
        generation = self.generate(
            prompts, self.sampling, group_size=self.hparams.num_generations, environments=environments
        )
        if environments is not None:  # reward functions read them as TRL passes them
            columns = {**columns, "environments": environments}
        return Sampled(batch, prompts, columns, generation)

    def score(self, sampled: Sampled, step: int | None = None) -> Scored:
        """The reward functions' scores of sampled completions. ``step``: the optimizer step the rollout
        trains at (what step-dependent rewards see; default: now). Safe to run in a worker thread: it touches
        no model, and its reward events (timeouts, code runs) are counted in its own context."""
        scoring, generation, trainer = time.perf_counter(), sampled.generation, self.trainer
        step = trainer.global_step if step is None else step
        state = RewardState(step, trainer.max_steps, float(trainer.current_epoch))
        completions, kwargs = generation_reward_inputs(
            generation, sampled.columns, state, rendered_prompts=sampled.prompts, tokenizer=self.tokenizer
        )
        with count_reward_events() as events:  # timeouts, sandboxed code runs: this rollout's share
            totals, per_fn = score_completions(self.rewards, completions, kwargs)
        rewards = torch.tensor(totals, dtype=torch.float32, device=generation.input_ids.device)
        return Scored(sampled.batch, generation, rewards, per_fn, dict(events), time.perf_counter() - scoring)

    def sample_and_score(self, batch: dict[str, list]) -> Scored:
        """G completions for each of the batch's records, scored by the reward functions."""
        scored = self.score(self.sample(batch))
        self.reward_events.update(scored.events)
        return scored
