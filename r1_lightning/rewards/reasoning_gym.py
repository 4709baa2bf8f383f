"""reasoning-gym's own verifier as a reward (its tasks as data: ``r1_lightning.data.ReasoningGymTask``)."""

from __future__ import annotations

from typing import Any

from r1_lightning.text import completion_text, extract_answer


def final_answer(text: str) -> str:
    """The completion's final answer: ``<answer>`` tag, else ``\\boxed{}``, else its last line.

    >>> final_answer("<think>5+3</think> <answer> 8 </answer>"), final_answer("so\\n8")
    ('8', '8')
    """
    answer = extract_answer(text)
    if answer is not None:
        return answer
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def reasoning_gym_reward(
    completions: list, reasoning_gym_entry: list[dict] | None = None, **kwargs: Any
) -> list[float | None]:
    """reasoning-gym's own verifier (``score_answer`` of the entry's task) on each completion's final
    answer; ``None`` for records that are not from reasoning-gym."""
    if reasoning_gym_entry is None:
        return [None] * len(completions)
    import reasoning_gym as rg  # optional (the reasoning-gym extra); records come from it

    scores: list[float | None] = []
    for completion, entry in zip(completions, reasoning_gym_entry, strict=True):
        if not entry:
            scores.append(None)
            continue
        score = rg.get_score_answer_fn(entry["metadata"]["source_dataset"])
        scores.append(float(score(final_answer(completion_text(completion)), entry)))
    return scores
