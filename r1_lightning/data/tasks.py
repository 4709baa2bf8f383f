"""Procedural prompt sources: endless, seeded, with a held-out split that never meets training."""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterator

from r1_lightning.data.sources import PromptSource, first_distinct


def _held_out(key: str, val_fraction: float) -> bool:
    """Stable membership in the validation split: a hash of the problem, not the RNG stream."""
    return zlib.crc32(key.encode()) % 10_000 < val_fraction * 10_000


class ProceduralTask(PromptSource):
    """Base for generated tasks: ``sample(rng)`` draws a record; problems are split by hash.

    Args:
        val_fraction: share of the problem space reserved for validation (by a hash of the prompt),
            so a held-out problem is never trained on, however long the run.
        val_size: number of held-out prompts in the validation set; a larger number than the held-out
            part of the problem space has takes all of them (e.g. ``val_size: 1000`` on addition of 0-19
            gives its 80 held-out problems: the whole held-out set, as a benchmark would).
    """

    #: consecutive draws without a new held-out problem after which the held-out space counts as exhausted
    exhausted_after = 20_000

    def __init__(self, val_fraction: float = 0.2, val_size: int = 64) -> None:
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"`val_fraction` must be in (0, 1), got {val_fraction}")
        self.val_fraction = val_fraction
        self.val_size = val_size

    def sample(self, rng: random.Random) -> dict:
        raise NotImplementedError

    def iter_train(self, seed: int, epoch: int) -> Iterator[dict]:
        rng = random.Random(f"{seed}-train-{epoch}")
        while True:
            record = self.sample(rng)
            if not _held_out(record["prompt"], self.val_fraction):
                yield record

    def val_records(self, seed: int) -> list[dict]:
        rng = random.Random(f"{seed}-val")
        draws = (self.sample(rng) for _ in range(1000 * max(self.val_size, 1)))
        held_out = lambda record: _held_out(record["prompt"], self.val_fraction)  # noqa: E731
        return first_distinct(draws, self.val_size, keep=held_out, patience=self.exhausted_after)


class ArithmeticTask(ProceduralTask):
    """Integer arithmetic: ``a op b (op c ...)`` with operands in ``[min_value, max_value]``.

    Records: ``{"prompt": "12 + 7", "answer": "19"}``.

    >>> ArithmeticTask(max_value=9, seed=0).sample(random.Random(0))
    {'prompt': '6 + 6', 'answer': '12'}
    """

    def __init__(
        self,
        min_value: int = 0,
        max_value: int = 99,
        num_operands: int = 2,
        operations: tuple[str, ...] = ("+",),
        seed: int = 0,
        val_fraction: float = 0.2,
        val_size: int = 64,
    ) -> None:
        super().__init__(val_fraction, val_size)
        if min_value > max_value:
            raise ValueError(f"`min_value` ({min_value}) must be <= `max_value` ({max_value})")
        unknown = set(operations) - {"+", "-", "*"}
        if unknown or not operations:
            raise ValueError(f"`operations` must be a non-empty subset of ('+', '-', '*'); got {operations}")
        if num_operands < 2:
            raise ValueError(f"`num_operands` must be >= 2, got {num_operands}")
        self.min_value, self.max_value = min_value, max_value
        self.num_operands, self.operations, self.seed = num_operands, tuple(operations), seed

    def sample(self, rng: random.Random) -> dict:
        values = [rng.randint(self.min_value, self.max_value) for _ in range(self.num_operands)]
        expression = str(values[0])
        for value in values[1:]:
            expression += f" {rng.choice(self.operations)} {value}"
        # Only +, - and * on integers: Python's eval is exact and the expression is ours, not user input.
        return {"prompt": expression, "answer": str(eval(expression))}


class CountdownTask(ProceduralTask):
    """Countdown (TinyZero's task): reach ``target`` from ``numbers`` with + - * /, each number once.

    Targets come from a random expression over the numbers, so every puzzle is solvable. Records carry
    ``numbers`` and ``target`` columns for :func:`r1_lightning.rewards.countdown_reward`.

    >>> record = CountdownTask(seed=0).sample(random.Random(1))
    >>> sorted(record)
    ['answer', 'numbers', 'prompt', 'target']
    """

    def __init__(
        self,
        num_numbers: int = 3,
        min_value: int = 1,
        max_value: int = 20,
        seed: int = 0,
        val_fraction: float = 0.2,
        val_size: int = 64,
    ) -> None:
        super().__init__(val_fraction, val_size)
        if num_numbers < 2:
            raise ValueError(f"`num_numbers` must be >= 2, got {num_numbers}")
        self.num_numbers, self.min_value, self.max_value, self.seed = num_numbers, min_value, max_value, seed

    def sample(self, rng: random.Random) -> dict:
        while True:
            numbers = [rng.randint(self.min_value, self.max_value) for _ in range(self.num_numbers)]
            order = numbers[:]
            rng.shuffle(order)
            value, expression = order[0], str(order[0])
            for number in order[1:]:
                op = rng.choice("+-*/")
                if op == "/" and (number == 0 or value % number):
                    op = "+"
                value = {"+": value + number, "-": value - number, "*": value * number, "/": value // number}[op]
                expression = f"({expression} {op} {number})"
            if value > 0:
                break
        prompt = (
            f"Using the numbers {numbers}, create an equation that equals {value}. You can use basic "
            "arithmetic operations (+, -, *, /) and each number can only be used once. Show your work in "
            "<think> </think> tags and return the final equation in <answer> </answer> tags"
        )
        return {"prompt": prompt, "answer": expression, "numbers": numbers, "target": value}


class CarryAdditionTask(ProceduralTask):
    """Multi-digit addition with graded difficulty, where writing the column sums out helps.

    A problem adds two numbers of ``d`` digits each, ``d`` drawn from ``[min_digits, max_digits]``;
    ``difficulty`` = ``d`` is a column (per-difficulty metrics group by it). One-digit sums can be
    answered at once; three-digit ones need carries, which a small model gets right far more often
    column by column than in one go: the task on which R1-Zero's longer reasoning can pay.

    >>> CarryAdditionTask(min_digits=2, max_digits=2).sample(random.Random(0))
    {'prompt': '63 + 15', 'answer': '78', 'difficulty': 2}
    """

    def __init__(self, min_digits: int = 1, max_digits: int = 3, val_fraction: float = 0.2, val_size: int = 64) -> None:
        super().__init__(val_fraction, val_size)
        if not 1 <= min_digits <= max_digits:
            raise ValueError(f"need 1 <= min_digits ({min_digits}) <= max_digits ({max_digits})")
        self.min_digits, self.max_digits = min_digits, max_digits

    def sample(self, rng: random.Random) -> dict:
        digits = rng.randint(self.min_digits, self.max_digits)
        low, high = (0 if digits == 1 else 10 ** (digits - 1)), 10**digits - 1
        a, b = rng.randint(low, high), rng.randint(low, high)
        return {"prompt": f"{a} + {b}", "answer": str(a + b), "difficulty": digits}
