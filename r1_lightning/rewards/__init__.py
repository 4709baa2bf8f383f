"""Rule-based rewards with the TRL / open-r1 signature ``fn(completions, **columns) -> list[float | None]``."""

from r1_lightning.rewards.accuracy import accuracy_reward, answers_match
from r1_lightning.rewards.countdown import countdown_reward
from r1_lightning.rewards.format import format_reward, tag_count_reward
from r1_lightning.rewards.registry import WeightedReward, build_rewards, resolve_reward, score_completions
from r1_lightning.rewards.shaping import (
    get_code_format_reward,
    get_cosine_scaled_reward,
    get_repetition_penalty_reward,
    get_soft_overlong_punishment,
    len_reward,
    reasoning_accuracy_reward,
    reasoning_steps_reward,
    think_format_reward,
)
from r1_lightning.text import completion_text, extract_answer

__all__ = [
    "accuracy_reward",
    "answers_match",
    "build_rewards",
    "completion_text",
    "countdown_reward",
    "extract_answer",
    "format_reward",
    "get_code_format_reward",
    "get_cosine_scaled_reward",
    "get_repetition_penalty_reward",
    "get_soft_overlong_punishment",
    "len_reward",
    "reasoning_accuracy_reward",
    "reasoning_steps_reward",
    "think_format_reward",
    "resolve_reward",
    "score_completions",
    "tag_count_reward",
    "WeightedReward",
]
