"""``tiny:reasoning``: a tiny base in which R1-Zero's longer, reflective reasoning *can* emerge.

The default tiny base (:mod:`r1_lightning.tiny.base`) only ever saw one-line answers, so RL has nothing to
lengthen. This one is pretrained offline on multi-digit addition "web text" (:class:`CarryAdditionTask`
problems) in which the work is *sometimes* written out:

- ``direct`` (most of the text): ``<think>47+85=132</think> <answer>132</answer>``;
- ``columns``: the column sums, right to left, with the carries:
  ``<think>7+5=12 carry 1. 4+8+1=13 carry 1. so 132</think> <answer>132</answer>``;
- ``recheck``: the same, with one slip that is caught and redone:
  ``... 4+8+1=12 wait, 4+8+1=13 carry 1. ...``;
- ``untagged``: ``The answer is 132.`` (no format).

Every worked text is correct; nothing in the corpus ties length to reward. A small model adds three-digit
numbers far less reliably in one go than column by column, so the accuracy reward alone can favour the
longer style, more so on harder problems (the shape of DeepSeek-R1's Figure 3), and re-checking can pay
where a column slips. Whether it does is measured, not assumed: ``configs/r1_zero_reasoning_tiny.yaml``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

STYLES = ("direct", "columns", "recheck", "untagged")


@dataclass(frozen=True)
class AdditionPretraining:
    """Problem sizes and the pretraining run of the tiny bases pretrained on multi-digit addition text (the
    cache key hashes the fields sorted by name, so subclasses add their corpus mix freely)."""

    min_digits: int = 1
    max_digits: int = 3
    steps: int = 800
    batch_size: int = 64
    lr: float = 3e-3
    hidden_size: int = 128
    layers: int = 4
    heads: int = 4
    seed: int = 0


@dataclass(frozen=True)
class ReasoningBaseRecipe(AdditionPretraining):
    """Corpus mix (probabilities of :data:`STYLES`) on top of the problem sizes and the pretraining run.

    Twice the shared pretraining run, and columns in 40% of the text: the first recipe (800 steps, 25%
    columns) gave a base whose column sums were barely better than its one-line answers on some CPUs (2-digit
    0.08 against 0.04 on an AVX-512 machine, 0.36 against 0.05 on an AVX2 one), so RL had nothing to prefer
    and went the wrong way there. This one writes columns reliably on every base seed measured
    (``benchmarks/showcase_seeds.py reasoning``), and three-digit sums are then right far more often written
    out than answered at once: the gap RL's accuracy reward can find."""

    steps: int = 1600
    direct: float = 0.45
    columns: float = 0.40
    recheck: float = 0.05
    untagged: float = 0.10


def column_steps(a: int, b: int) -> list[tuple[int, int, int, int]]:
    """``(digit_a, digit_b, carry_in, column_sum)`` from the ones column up.

    >>> column_steps(47, 85)
    [(7, 5, 0, 12), (4, 8, 1, 13)]
    """
    steps, carry, i = [], 0, 0
    while a // 10**i or b // 10**i or i == 0:
        x, y = a // 10**i % 10, b // 10**i % 10
        total = x + y + carry
        steps.append((x, y, carry, total))
        carry, i = total // 10, i + 1
    return steps


def worked_text(a: int, b: int, style: str, rng: random.Random) -> str:
    """The reasoning inside ``<think>`` in one of the written styles.

    >>> worked_text(47, 85, "columns", random.Random(0))
    '7+5=12 carry 1. 4+8+1=13 carry 1. so 132'
    >>> worked_text(47, 85, "direct", random.Random(0))
    '47+85=132'
    """
    if style == "direct":
        return f"{a}+{b}={a + b}"
    steps = column_steps(a, b)
    slip = rng.randrange(len(steps)) if style == "recheck" else None
    parts = []
    for i, (x, y, carry, total) in enumerate(steps):
        expression = f"{x}+{y}" + (f"+{carry}" if carry else "")
        line = f"{expression}={total}"
        if i == slip:
            wrong = total + rng.choice((-1, 1)) if total > 0 else total + 1
            line = f"{expression}={wrong} wait, {expression}={total}"
        parts.append(line + (" carry 1" if total >= 10 else ""))
    return ". ".join(parts) + f". so {a + b}"


def completion(a: int, b: int, recipe: ReasoningBaseRecipe, rng: random.Random) -> str:
    """One pretraining completion for ``a + b``, its style drawn from the recipe's mix."""
    draw, edge = rng.random(), 0.0
    for style in STYLES:
        edge += getattr(recipe, style)
        if draw < edge:
            break
    if style == "untagged":
        return f" The answer is {a + b}."
    return f" <think>{worked_text(a, b, style, rng)}</think> <answer>{a + b}</answer>"


def build_reasoning_tokenizer():
    """The tiny tokenizer, with the words of the worked texts (``carry``, ``wait``, ``so``) as tokens."""
    from r1_lightning.tiny.base import build_tokenizer

    tokenizer = build_tokenizer()
    tokenizer.add_tokens([" carry", " wait", " so"])
    return tokenizer


@torch.enable_grad()
def pretrain_reasoning(recipe: ReasoningBaseRecipe, out_dir: Path) -> None:
    """Causal-LM pretraining on the corpus above (loss on completions only); saves HF format."""
    from r1_lightning.data.tasks import CarryAdditionTask
    from r1_lightning.tiny.base import build_model, pretrain_loop

    tokenizer = build_reasoning_tokenizer()
    model = build_model(tokenizer, recipe.hidden_size, recipe.layers, recipe.heads, seed=recipe.seed)
    task = CarryAdditionTask(recipe.min_digits, recipe.max_digits)

    def example(rng: random.Random) -> tuple[str, str]:
        problem = task.sample(rng)  # (held-out problems too: pretraining text, as the web has them)
        a, b = (int(x) for x in problem["prompt"].split(" + "))
        return problem["prompt"], completion(a, b, recipe, rng)

    pretrain_loop(model, tokenizer, example, recipe, out_dir, "building the tiny reasoning base (one-off): pretraining")


def tiny_reasoning_path(recipe: ReasoningBaseRecipe | None = None) -> Path:
    """Path of the cached reasoning base, pretrained first if it is not cached yet (about 6 minutes)."""
    from r1_lightning.tiny.base import cached_base

    return cached_base(
        "tiny-reasoning",
        recipe or ReasoningBaseRecipe(),
        pretrain_reasoning,
        "tiny reasoning base (one-off, about 6 minutes on 2 CPU cores)",
    )
