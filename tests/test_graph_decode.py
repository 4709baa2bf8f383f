"""``rollout_engine: cuda_graph``: the lean step with fixed shapes (for CUDA-graph capture) computes what the
lean step computes. Off CUDA it runs eagerly, which is what these tests drive; the capture itself is in
``tests/test_gpu.py``."""

import pytest
import torch
from transformers import LlamaConfig, Qwen2Config, Qwen3Config

from r1_lightning.generation import graph_decode
from r1_lightning.generation.graph_decode import GraphedLeanDecoder
from r1_lightning.generation.lean_decode import LeanDecoder
from r1_lightning.generation.rollout import SamplingConfig
from r1_lightning.generation.sampler import TorchGenerator
from r1_lightning.hf_compat import returned_cache
from tests.test_lean_decode import ARCHITECTURES, PROMPTS, _model
from tests.test_lean_decode import tokenizer as tokenizer  # noqa: F401  (the module-scoped fixture)


def _decoders(model, tokenizer, steps, group, bucket):
    encoded = tokenizer(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    made = []
    for _ in range(2):  # each decoder gets its own prefill cache: both write into theirs
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        rows_mask, rows_pos = mask.repeat_interleave(group, 0), positions.repeat_interleave(group, 0)
        made.append(LeanDecoder(model, returned_cache(out), rows_mask, rows_pos, steps, repeats=group))
    for cache in (*made[1].keys, *made[1].values):  # what uninitialised memory may hold: attended with weight 0
        cache[:, :, made[1].column :] = float("nan")
    return made[0], GraphedLeanDecoder(made[1], bucket=bucket, capture=False)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_static_step_equals_the_lean_step_across_buckets(arch, tokenizer):
    """Teacher-forced steps over three width buckets: every step's logits equal the lean step's, the
    left-padded prompt stays masked, and columns not yet written are masked and zeroed (NaN there, as
    uninitialised memory may hold, would poison the step through 0 * NaN)."""
    config_class, extra = ARCHITECTURES[arch]
    model = _model(config_class, tokenizer, **extra)
    steps, group = 9, 2
    lean, graphed = _decoders(model, tokenizer, steps, group, bucket=4)
    prompt_length = lean.column
    torch.manual_seed(1)
    tokens = torch.randint(5, len(tokenizer), (len(PROMPTS) * group, steps))
    widths = []
    for t in range(steps):
        widths.append(graphed.width())
        torch.testing.assert_close(graphed.step(tokens[:, t]), lean.step(tokens[:, t]), atol=2e-5, rtol=1e-4)
    assert widths[0] == (prompt_length // 4 + 1) * 4 and widths[-1] == prompt_length + steps  # capped at the cache
    assert len(set(widths)) >= 3
    for mine, theirs in zip(graphed.lean.keys, lean.keys, strict=True):  # the same keys in the same columns
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-4)
    with pytest.raises(RuntimeError, match="max_new_tokens"):
        graphed.step(tokens[:, 0])


@pytest.mark.parametrize("group_size", [1, 3])
def test_cuda_graph_engine_samples_what_the_lean_engine_samples(group_size, tokenizer):
    """Through the sampler (off CUDA: the static step run eagerly): same seed, same tokens, greedy and sampled,
    with a frequent stop string so that rows finish early (they stay in its batch; not in the lean one's)."""
    model = _model(Qwen2Config, tokenizer)
    prompts = [p for p in PROMPTS for _ in range(group_size)]
    for sampling in (
        SamplingConfig(temperature=0, max_new_tokens=12),
        SamplingConfig(temperature=1.0, top_k=50, top_p=0.9, max_new_tokens=20, stop_strings=("e",)),
    ):
        results = {}
        for engine in ("lean", "cuda_graph"):
            torch.manual_seed(3)
            results[engine] = TorchGenerator(tokenizer, engine=engine).generate(model, prompts, sampling, group_size)
        assert torch.equal(results["lean"].input_ids, results["cuda_graph"].input_ids)
        assert torch.equal(results["lean"].completion_mask, results["cuda_graph"].completion_mask)


def test_bucket_widths(tokenizer):
    model = _model(LlamaConfig, tokenizer)
    _, graphed = _decoders(model, tokenizer, steps=20, group=1, bucket=8)
    total = graphed.total
    graphed.next_column = 0
    assert graphed.width() == 8
    graphed.next_column = 7
    assert graphed.width() == 8
    graphed.next_column = 8
    assert graphed.width() == 16
    graphed.next_column = total - 1
    assert graphed.width() == total
    with pytest.raises(ValueError, match="bucket must be >= 1"):
        GraphedLeanDecoder(graphed.lean, bucket=0)


def test_refusals_name_the_setting(tokenizer):
    """No CUDA: the config is refused before any compute; quantized weights: the engine says why not."""
    from r1_lightning.training.grpo import GRPOModule

    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="`model.rollout_engine: cuda_graph` needs a CUDA device"):
            GRPOModule(model="tiny:random", rollout_engine="cuda_graph")
    model = _model(Qwen3Config, tokenizer, head_dim=16)
    assert graph_decode.unsupported_reason(model) is None
    fake_4bit = type("Params4bit", (torch.nn.Parameter,), {})
    model.lm_head.weight = fake_4bit(model.lm_head.weight.detach().clone())
    assert "bitsandbytes-quantized" in graph_decode.unsupported_reason(model)
    with pytest.raises(ValueError, match="rollout_engine 'cuda_graph' cannot decode this model: bitsandbytes"):
        TorchGenerator(tokenizer, engine="cuda_graph").generate(model, PROMPTS, SamplingConfig(max_new_tokens=2))
