"""Choosing reward functions by name or dotted import path, and combining them by weight."""

from __future__ import annotations

import difflib
import functools
import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from r1_lightning.rewards.limits import TimeLimitedReward

RewardFn = Callable[..., list]


def builtin_rewards() -> dict[str, RewardFn]:
    # Imported on first lookup, not with the package: language detection (lingua's models), reward
    # models and reasoning-gym are heavy, and a dotted-path reward of the user's needs none of them.
    from r1_lightning.rewards.accuracy import accuracy_reward
    from r1_lightning.rewards.code import code_reward
    from r1_lightning.rewards.countdown import countdown_reward
    from r1_lightning.rewards.format import format_reward, tag_count_reward
    from r1_lightning.rewards.language import language_consistency_reward
    from r1_lightning.rewards.reasoning_gym import reasoning_gym_reward
    from r1_lightning.rewards.reward_model_reward import RewardModelReward
    from r1_lightning.rewards.shaping import PEER_REWARDS

    functions = (
        accuracy_reward,
        code_reward,
        countdown_reward,
        format_reward,
        tag_count_reward,
        language_consistency_reward,
        reasoning_gym_reward,
        *PEER_REWARDS,
    )
    return {**{fn.__name__: fn for fn in functions}, "reward_model": RewardModelReward}


def resolve_reward(name: str) -> RewardFn:
    """A built-in reward by name (``accuracy_reward``) or any callable by dotted path (``pkg.mod.fn``).

    TRL's and open-r1's reward functions share the signature ``fn(completions, **columns)``, so
    ``trl.rewards.think_format_reward`` works as is.
    """
    builtins = builtin_rewards()
    if name in builtins:
        return builtins[name]
    if "." in name:
        module_name, _, attr = name.rpartition(".")
        try:
            fn = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"reward function {name!r} could not be imported: {err}") from err
        if not callable(fn):
            raise ValueError(f"reward function {name!r} is not callable")
        return fn
    close = difflib.get_close_matches(name, builtins, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(
        f"unknown reward function {name!r} in `rewards`.{hint} Built-ins: {sorted(builtins)}; "
        "or give a dotted import path such as 'my_package.rewards.my_reward'."
    )


@dataclass
class WeightedReward:
    name: str
    fn: RewardFn
    weight: float


RewardSpec = dict[str, "float | dict[str, Any]"]


def build_reward(name: str, spec: float | dict[str, Any]) -> WeightedReward:
    """One entry of ``rewards``: ``name: weight``, or ``name: {weight: w, function: f, <arguments>}``.

    The long form configures a reward: ``function`` (default: ``name``) is a built-in or dotted path;
    ``factory_args`` calls ``function`` with them first and uses the reward function it returns (TRL's
    and open-r1's ``get_soft_overlong_punishment(max_completion_len, soft_punish_cache)``,
    ``get_repetition_penalty_reward(ngram_size, max_penalty)``, ``get_cosine_scaled_reward(...)``);
    ``timeout`` (seconds) runs each call in a child process killed at that deadline (the batch then
    scores 0 and the timeout is counted; see ``limits.py``); the other keys are keyword arguments, bound
    with ``functools.partial`` for a function, or passed to the constructor when ``function`` names a
    class (``reward_model``: a reward model, built once).

    >>> build_reward("format_reward", 0.5).weight
    0.5
    >>> r = build_reward("lang", {"weight": 0.2, "function": "language_consistency_reward", "default_language": "fr"})
    >>> r.name, r.weight, r.fn(["<think>Nous ajoutons les deux nombres.</think>"])
    ('lang', 0.2, [1.0])
    """
    if not isinstance(spec, dict):
        return WeightedReward(name.rsplit(".", 1)[-1], resolve_reward(name), float(spec))
    arguments = dict(spec)
    weight = float(arguments.pop("weight", 1.0))
    timeout = arguments.pop("timeout", None)
    factory_args = arguments.pop("factory_args", None)
    target = resolve_reward(str(arguments.pop("function", name)))
    if factory_args is not None:
        try:
            target = target(**dict(factory_args))
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"reward {name!r}: calling its factory with factory_args {dict(factory_args)} failed: {err}"
            ) from err
        if not callable(target):
            raise ValueError(f"reward {name!r}: its factory returned {type(target).__name__}, not a reward function")
    if isinstance(target, type):
        try:
            fn = target(**arguments)
        except TypeError as err:
            raise ValueError(f"reward {name!r}: bad arguments for {target.__name__}: {err}") from err
    else:
        fn = functools.partial(target, **arguments) if arguments else target
    if timeout is not None:
        if isinstance(target, type):
            raise ValueError(
                f"reward {name!r}: `timeout` runs a function in a child process; {target.__name__} is a class"
            )
        fn = TimeLimitedReward(name, fn, float(timeout))
    return WeightedReward(name, fn, weight)


def build_rewards(spec: RewardSpec) -> list[WeightedReward]:
    """``{"accuracy_reward": 1.0, "format_reward": 0.5}`` -> resolved functions with their weights."""
    if not spec:
        raise ValueError("`rewards` is empty: name at least one reward function, e.g. {accuracy_reward: 1.0}")
    rewards = [build_reward(name, value) for name, value in spec.items()]
    if all(reward.weight == 0 for reward in rewards):
        raise ValueError(
            f"every weight in `rewards` is 0 ({', '.join(r.name for r in rewards)}): every advantage would "
            "be 0 and nothing would train; give at least one reward a non-zero weight"
        )
    return rewards


def _preview(completion: Any, limit: int = 300) -> str:
    text = completion if isinstance(completion, str) else repr(completion)
    return text if len(text) <= limit else text[:limit] + "..."


def score_completions(
    rewards: list[WeightedReward], completions: list, columns: dict[str, list]
) -> tuple[list[float], dict[str, list[float | None]]]:
    """Call each reward function and return ``(weighted total per completion, raw scores per function)``.

    ``None`` means "not applicable" (e.g. no reference answer): it adds nothing to the total, like TRL's
    nan-sum. A function that raises, returns the wrong number of scores, or a non-finite score is an
    error that names the function and shows the completion concerned.
    """
    totals = [0.0] * len(completions)
    per_fn: dict[str, list[float | None]] = {}
    for reward in rewards:
        try:
            scores = list(reward.fn(completions=completions, **columns))
        except Exception as err:
            preview = _preview(completions[0]) if completions else "<no completions>"
            raise RuntimeError(
                f"reward function {reward.name!r} raised {type(err).__name__}: {err}. "
                f"First completion of the batch: {preview!r}"
            ) from err
        if len(scores) != len(completions):
            raise ValueError(
                f"reward function {reward.name!r} returned {len(scores)} scores for {len(completions)} completions"
            )
        for i, score in enumerate(scores):
            if score is None:
                continue
            if not math.isfinite(float(score)):
                raise ValueError(
                    f"reward function {reward.name!r} returned {score} for completion {_preview(completions[i])!r}"
                )
            totals[i] += reward.weight * float(score)
        per_fn[reward.name] = [None if s is None else float(s) for s in scores]
    return totals, per_fn
