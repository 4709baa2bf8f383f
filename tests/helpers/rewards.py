"""Rewards for test runs."""

RECORDED: list[dict] = []


def varied_reward(completions, **kwargs):
    """Differs within groups even for a random-init model, so every step has a gradient."""
    return [float(len(c) % 3) for c in completions]


def recording_reward(completions, prompts, completion_ids, trainer_state, solution, level, **kwargs):
    """What a TRL-style reward reads; recorded in ``RECORDED`` for the test to inspect."""
    RECORDED.append({"completions": completions, "prompts": prompts, "ids": completion_ids,
                     "step": trainer_state.global_step, "solution": solution, "level": level})  # fmt: skip
    return [float(len(c[0]["content"]) % 2) for c in completions]


def even_token_reward(completions, completion_ids, **kwargs):
    """Share of a completion's tokens with an even id: learnable from scratch (a random-init model scores
    about 0.5, and any shift of its output layer towards even ids raises it), with no text to parse."""
    return [sum(1 for token in ids if token % 2 == 0) / max(len(ids), 1) for ids in completion_ids]


def accept_all(completions, **kwargs):
    """Every completion counts as correct: a rejection-sampling verifier for wiring tests whose teacher is
    random-init (the traces' quality is not what they test)."""
    return [1.0] * len(completions)


def signal_on_even_answers(completions, answer, **kwargs):
    """Varies within a group only for problems with an even answer; constant 0 for odd ones: about half of
    every batch's groups carry no signal (what dynamic sampling drops)."""
    return [float(len(c) % 3) if int(a) % 2 == 0 else 0.0 for c, a in zip(completions, answer, strict=True)]


def failing_reward(completions, **kwargs):
    """A verifier that is down: raises on every call."""
    raise ConnectionError("verifier unreachable")
