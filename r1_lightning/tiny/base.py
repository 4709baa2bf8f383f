"""A tiny, offline base model for the embedded default and the tests.

R1-Zero starts from a *base* model whose accuracy is low but not zero. With no hub access we make one:
a byte-level BPE tokenizer trained with ``tokenizers`` on generated text, a Qwen2-architecture model a
few hundred thousand parameters big, and a short causal-LM pretraining on a generated corpus of
arithmetic "transcripts" that, like web text, are only sometimes right and only sometimes in the
``<think>``/``<answer>`` format. The result is saved in HF format (``save_pretrained``) and cached, so
it is built once per machine (about 2 minutes on two CPU cores).

Names understood by :func:`r1_lightning.models.loading.load_policy`:

- ``tiny:random`` - random initialisation (tests; instant).
- ``tiny:arithmetic`` - the pretrained tiny base for ``ArithmeticTask(min_value=0, max_value=19)``.
- ``tiny:arithmetic-small`` - a smaller base pretrained the same way on the same corpus (:data:`SMALL_RECIPE`):
  the student of the distillation pipeline, as R1's Qwen2.5/Llama students were smaller pretrained bases
  of the same kind of text as their teacher's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from filelock import FileLock, Timeout

from r1_lightning.data.tasks import ArithmeticTask, CountdownTask
from r1_lightning.data.templates import R1_ZERO_TEMPLATE
from r1_lightning.hf_compat import cache_argument, returned_cache
from r1_lightning.progress import Progress

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]
# The R1 format tags get a token each, as they would in a model trained with them in mind.
TAG_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN2_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_VERSION = 1  # bump when the recipe's code changes, to invalidate caches


def cache_dir() -> Path:
    return Path(os.environ.get("R1_LIGHTNING_CACHE", Path.home() / ".cache" / "r1_lightning"))


def build_tokenizer(vocab_size: int = 640):
    """Byte-level BPE trained on generated prompts and completions, with a chat template; offline."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(0)
    arithmetic, countdown = ArithmeticTask(max_value=99, operations=("+", "-", "*")), CountdownTask()
    corpus = [R1_ZERO_TEMPLATE] * 50
    for _ in range(3000):
        record = arithmetic.sample(rng)
        corpus.append(f"{record['prompt']} = {record['answer']}. The answer is {record['answer']}")
    corpus += [countdown.sample(rng)["prompt"] for _ in range(200)]
    corpus += ["Natalia sold clips to 48 of her friends in April, and then she sold half as many in May."] * 5
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    # Qwen2's own normalizer and pre-tokenizer (digits one by one), so that AutoTokenizer, which
    # rebuilds a Qwen2 tokenizer from these files, tokenizes exactly as this one does.
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
        bos_token=None,
        unk_token=None,
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    fast.add_tokens(TAG_TOKENS)
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def build_model(tokenizer, hidden_size: int = 96, layers: int = 3, heads: int = 4, seed: int = 0):
    """A Qwen2-architecture causal LM of the given (small) size, randomly initialised."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 3,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config)


@dataclass(frozen=True)
class BaseRecipe:
    """How the tiny base is made: the problems it saw and how noisy its "web text" was.

    Completion styles (probabilities): ``good`` is the R1 format with the right sum; ``wrong`` the
    format with a classic slip (the operands' digits joined, "12+7=127"); ``untagged`` the right sum
    but no ``<answer>`` tags; the rest is plain prose ("The answer is ..."), right half of the time.
    The base thus *can* add, but rarely answers right *and* in format: what R1-Zero's RL has to find.
    """

    min_value: int = 0
    max_value: int = 19
    good: float = 0.10
    wrong: float = 0.40
    untagged: float = 0.25
    steps: int = 1000
    batch_size: int = 64
    lr: float = 3e-3
    hidden_size: int = 96
    layers: int = 3
    seed: int = 0


def noisy_completion(a: int, b: int, recipe: BaseRecipe, rng: random.Random) -> str:
    """One pretraining completion for ``a + b`` in a randomly drawn style (see :class:`BaseRecipe`)."""
    right, slip = a + b, int(f"{a}{b}")
    draw = rng.random()
    if draw < recipe.good:
        return f" <think>{a}+{b}={right}</think> <answer>{right}</answer>"
    if draw < recipe.good + recipe.wrong:
        return f" <think>{a}+{b}={slip}</think> <answer>{slip}</answer>"
    if draw < recipe.good + recipe.wrong + recipe.untagged:
        return f" <think>{a}+{b}={right}</think> {right}"
    return f" The answer is {rng.choice((right, slip))}."


@torch.enable_grad()
def pretrain(recipe: BaseRecipe, out_dir: Path) -> None:
    """Causal-LM pretraining on the noisy corpus (loss on completions only); saves HF format.

    Every sample starts with the same R1-Zero template text up to "User:", so that shared prefix is run
    once per step and its key/value cache broadcast over the batch (gradients flow through it); only
    the short per-sample tails are run per sample. Same loss as full sequences, ~3x cheaper.
    """
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, recipe.hidden_size, recipe.layers, seed=recipe.seed)

    def example(rng: random.Random) -> tuple[str, str]:
        a, b = rng.randint(recipe.min_value, recipe.max_value), rng.randint(recipe.min_value, recipe.max_value)
        return f"{a} + {b}", noisy_completion(a, b, recipe, rng)

    description = f"building the tiny base (hidden {recipe.hidden_size}, {recipe.layers} layers; one-off): pretraining"
    pretrain_loop(model, tokenizer, example, recipe, out_dir, description)


def pretrain_loop(model, tokenizer, example, recipe, out_dir: Path, description: str) -> None:
    """The pretraining both tiny bases share: ``recipe.steps`` AdamW steps (one-cycle schedule, clipped
    gradients) on batches of ``recipe.batch_size`` R1-Zero-template prompts whose problem and
    completion ``example(rng)`` draws, loss on completions only (:func:`shared_prefix_loss`); then the
    model, tokenizer and ``recipe.json`` are saved to ``out_dir``."""
    head, tail_template = R1_ZERO_TEMPLATE.split(" User:")
    prefix = torch.tensor([tokenizer(head)["input_ids"]])
    rng = random.Random(recipe.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, recipe.lr, total_steps=recipe.steps, pct_start=0.05)
    model.train()
    progress = Progress(recipe.steps, description)
    for _step in range(recipe.steps):
        rows, prompt_lengths, unscored = [], [], []
        for _ in range(recipe.batch_size):
            problem, text = example(rng)
            prompt = tokenizer(" User:" + tail_template.replace("{prompt}", problem))["input_ids"]
            completion, skipped = _completion_ids(tokenizer, text, len(prompt))
            rows.append(prompt + completion + [tokenizer.eos_token_id])
            prompt_lengths.append(len(prompt))
            unscored.append(skipped)
        loss = shared_prefix_loss(model, prefix, rows, prompt_lengths, tokenizer.pad_token_id, unscored)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        progress.update(1, loss=loss.item())
    progress.close()
    tokenizer.padding_side = "left"
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "recipe.json").write_text(json.dumps(asdict(recipe), indent=2))


def _completion_ids(tokenizer, text: str | list[tuple[str, bool]], offset: int) -> tuple[list[int], list[int]]:
    """A completion's ids, and the positions (from ``offset``) that carry no loss: ``text`` is a string (all
    scored) or segments ``(text, scored)`` tokenized one by one, as the decode loop inserts a tool's response."""
    if isinstance(text, str):
        return tokenizer(text)["input_ids"], []
    ids: list[int] = []
    skipped: list[int] = []
    for segment, scored in text:
        part = tokenizer(segment, add_special_tokens=False)["input_ids"] if segment else []
        if not scored:
            skipped += range(offset + len(ids), offset + len(ids) + len(part))
        ids += part
    return ids, skipped


def shared_prefix_loss(
    model,
    prefix: torch.Tensor,
    rows: list[list[int]],
    prompt_lengths: list[int],
    pad_id: int,
    unscored: list[list[int]] | None = None,
) -> torch.Tensor:
    """Causal-LM loss on the completions of ``rows`` (token ids after ``prefix``; the first
    ``prompt_lengths[i]`` of each are prompt, not scored, nor are the positions ``unscored[i]``). The prefix
    common to every row runs once and its key/value cache is broadcast over the batch (gradients flow
    through it)."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id)
    labels = torch.full((len(rows), width), -100)
    for i, (row, plen) in enumerate(zip(rows, prompt_lengths, strict=True)):
        ids[i, : len(row)] = torch.tensor(row)
        labels[i, plen : len(row)] = torch.tensor(row[plen:])
        if unscored and unscored[i]:
            labels[i, unscored[i]] = -100
    cache = returned_cache(model(input_ids=prefix, use_cache=True))
    cache.batch_repeat_interleave(len(rows))
    start = prefix.shape[1]
    positions = torch.arange(start, start + width).expand(len(rows), -1)
    attention = torch.ones(len(rows), start + width, dtype=torch.long)
    return model(
        input_ids=ids, attention_mask=attention, position_ids=positions, labels=labels, **cache_argument(model, cache)
    ).loss


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # somebody else's live process
        return True
    return True


def remove_stale_builds(folder: Path, max_legacy_age_s: float = 24 * 3600) -> list[Path]:
    """Delete the half-built folders that killed builds left in the cache.

    Builds write into ``.build-<target>-<pid>``: one whose process is dead is stale. Folders named
    ``tmp*`` come from older versions (which named them with ``tempfile``) and cannot be traced to a
    process; they go once they are a day old.
    """
    removed = []
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        stale = False
        if path.is_dir() and path.name.startswith(".build-"):
            pid = path.name.rsplit("-", 1)[-1]
            stale = pid.isdigit() and not _pid_alive(int(pid))
        elif path.is_dir() and path.name.startswith("tmp"):
            stale = time.time() - path.stat().st_mtime > max_legacy_age_s
        if stale:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed:
        log.warning("removed %d half-built folder(s) left by killed builds in %s", len(removed), folder)
    return removed


def _build_once(target: Path, build) -> Path:
    """Run ``build(folder)`` into a private folder renamed to ``target``, unless ``target`` exists.

    One build at a time per target: a file lock (``<target>.lock``) makes concurrent runs wait and then
    reuse the finished model instead of each building it. The rename makes an interrupted build leave
    nothing half-written under the target's name, and the next build removes what it left behind.
    ``fork_rng``: building must not shift the caller's random stream, or a run that builds a model would
    sample differently from one that finds it cached. ``enable_grad``: the caller may be inside
    ``torch.no_grad()`` (an evaluation that first needs the model), and pretraining needs gradients.
    """
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(target) + ".lock")
    try:
        lock.acquire(timeout=0.5)
    except Timeout:
        print(
            f"waiting for another process that is building {target.name} (lock {lock.lock_file})",
            file=sys.stderr,
            flush=True,
        )
        lock.acquire()
    try:
        if (target / "config.json").exists():  # built by the process we waited for
            return target
        remove_stale_builds(target.parent)
        work = target.parent / f".build-{target.name}-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        try:
            with torch.random.fork_rng(), torch.enable_grad():
                build(work)
            os.replace(work, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    finally:
        lock.release()
    return target


def cached_base(name: str, recipe, pretrain_fn, duration: str) -> Path:
    """``<cache>/<name>-<hash of recipe and code version>``, pretrained by ``pretrain_fn(recipe, folder)``
    first if it is not cached yet (announced on stderr: print, not log, since the CLI has not set up
    logging when this runs, and minutes of silence look like a hang)."""
    key = hashlib.sha256(json.dumps({**asdict(recipe), "v": _VERSION}, sort_keys=True).encode()).hexdigest()[:12]
    target = cache_dir() / f"{name}-{key}"
    if not (target / "config.json").exists():
        print(f"building the {duration} into {target}", file=sys.stderr, flush=True)
    return _build_once(target, lambda folder: pretrain_fn(recipe, folder))


def tiny_base_path(recipe: BaseRecipe | None = None) -> Path:
    """Path of the cached tiny base for ``recipe``, pretraining it first if it is not cached yet."""
    return cached_base(
        "tiny-arithmetic",
        recipe or BaseRecipe(),
        pretrain,
        "tiny offline base model (one-off, about 2 minutes on 2 CPU cores)",
    )


#: The distillation student's base: half the width and two thirds of the depth of the default base (about
#: a fifth of its non-embedding parameters), pretrained on the same noisy corpus for fewer steps, so it
#: starts weak but not blank.
SMALL_RECIPE = BaseRecipe(hidden_size=48, layers=2, steps=600)


def tiny_small_base_path(recipe: BaseRecipe | None = None) -> Path:
    """Path of the cached ``tiny:arithmetic-small`` base (``recipe``, default :data:`SMALL_RECIPE`), pretrained
    first if needed."""
    return cached_base(
        "tiny-arithmetic-small",
        recipe or SMALL_RECIPE,
        pretrain,
        "small tiny offline base model, the distillation student (one-off, about 1 minute on 2 CPU cores)",
    )


def _save_random_tiny(folder: Path) -> None:
    tokenizer = build_tokenizer()
    build_model(tokenizer, hidden_size=32, layers=2, heads=2).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def tiny_random_path() -> Path:
    """Path of a cached random-initialised tiny model (tokenizer included) for tests."""
    return _build_once(cache_dir() / f"tiny-random-v{_VERSION}", _save_random_tiny)
