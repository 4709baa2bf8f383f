"""Memory savers on CPU: LoRA (reference = adapters disabled), bitsandbytes quantization and 8-bit
optimizers, and micro-batches sized by token count."""

from pathlib import Path

import pytest
import torch
from helpers import NO_EVAL
from helpers import fast_args as _fast

from r1_lightning.cli.main import main
from r1_lightning.generation.forward import batched_logprobs, completion_logprobs
from r1_lightning.generation.rollout import Generation, SamplingConfig, padding_fraction, plan_micro_batches
from r1_lightning.generation.sampler import TorchGenerator
from r1_lightning.models.loading import build_optimizer
from r1_lightning.training.grpo import GRPOModule


def _generation(prompt_lengths, completion_lengths, prompt_width=5, completion_width=6):
    """A fake rollout whose rows have the given real prompt and completion lengths."""
    n = len(prompt_lengths)
    attention = torch.zeros(n, prompt_width + completion_width, dtype=torch.long)
    completion_mask = torch.zeros(n, completion_width, dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompt_lengths, completion_lengths, strict=True)):
        attention[i, prompt_width - p : prompt_width + c] = 1
        completion_mask[i, :c] = 1
    ids = torch.arange(n * (prompt_width + completion_width)).view(n, -1) % 50
    return Generation(ids, attention, completion_mask, prompt_width, torch.zeros(n, dtype=torch.bool), [""] * n, 0.0)


def test_token_budget_groups_rows_by_length_and_trims_padding():
    gen = _generation([5, 1, 2, 5], [6, 1, 1, 5])  # lengths 11, 2, 3, 10
    plans = plan_micro_batches(gen, max_tokens=22)
    # longest first: rows 0 and 3 fit together (2 x (5 + 6) = 22), then 2 and 1 (2 x (2 + 1) = 6)
    assert [mb.rows.tolist() for mb in plans] == [[0, 3], [2, 1]]
    assert (plans[1].prompt_start, plans[1].completion_length) == (3, 1)
    input_ids, attention, prompt_length = plans[1].take(gen)
    assert input_ids.shape == (2, 3) and prompt_length == 2
    # padded tokens computed: 22 + 6 = 28, real ones 11 + 2 + 3 + 10 = 26
    assert padding_fraction(gen, plans) == pytest.approx(1 - 26 / 28)
    assert padding_fraction(gen, plan_micro_batches(gen)) == pytest.approx(1 - 26 / 44)


def test_row_cap_oversized_rows_and_min_count():
    gen = _generation([5, 1, 2, 5], [6, 1, 1, 5])
    assert [len(mb.rows) for mb in plan_micro_batches(gen, max_rows=3)] == [3, 1]
    assert [mb.rows.tolist() for mb in plan_micro_batches(gen, max_tokens=4)] == [[0], [3], [2], [1]]
    assert len(plan_micro_batches(gen, min_count=3)) == 3
    everything = sorted(i for mb in plan_micro_batches(gen, max_tokens=12, min_count=4) for i in mb.rows.tolist())
    assert everything == [0, 1, 2, 3]


def test_trimmed_micro_batches_give_the_same_logprobs(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    torch.manual_seed(0)
    prompts = ["1 + 2", "a much longer prompt here: 12 + 7", "3", "what is 19 + 19?"]
    gen = TorchGenerator(tokenizer).generate(model, prompts, SamplingConfig(max_new_tokens=10))
    model.eval()
    with torch.no_grad():
        full = completion_logprobs(model, gen.input_ids, gen.attention_mask, gen.prompt_length)[0]
    planned = batched_logprobs(model, gen, 1.0, plan_micro_batches(gen, max_tokens=30))
    mask = gen.completion_mask.bool()
    torch.testing.assert_close(planned[mask], full[mask], atol=1e-5, rtol=1e-5)


def test_lora_reference_is_the_base_with_adapters_disabled(tiny_model_and_tokenizer):
    module = GRPOModule(model="tiny:random", beta=0.04, lora={"r": 4, "alpha": 8})
    assert module.reference is None
    trainable = [n for n, p in module.policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    gen = module.generator.generate(module.policy, ["1 + 2", "3 + 4"], SamplingConfig(max_new_tokens=6))
    before = module.reference_logprobs(gen, plan_micro_batches(gen))
    # Move the adapters: the policy changes, the reference (adapters disabled) does not.
    with torch.no_grad():
        for name, p in module.policy.named_parameters():
            if "lora_B" in name:
                p.add_(0.5)
    module.policy.eval()
    policy_lp = batched_logprobs(module.policy, gen, 1.0)
    after = module.reference_logprobs(gen, plan_micro_batches(gen))
    torch.testing.assert_close(after, before)
    assert not torch.allclose(policy_lp, after)


def test_lora_options_that_do_not_apply_are_rejected():
    with pytest.raises(ValueError, match="needs `lora`"):
        GRPOModule(model="tiny:random", quantization="4bit")
    with pytest.raises(ValueError, match="reference_quantization"):
        GRPOModule(model="tiny:random", lora={"r": 4}, reference_quantization="8bit")
    with pytest.raises(ValueError, match="optimizer"):
        GRPOModule(model="tiny:random", optimizer="adam9000")


def test_lora_run_trains_adapters_only_and_exports_merged(tmp_path):
    cli = main(
        [
            "fit",
            *_fast(
                tmp_path,
                "--trainer.max_steps",
                "2",
                *NO_EVAL,
                "--model.init_args.lora",
                "{r: 4, alpha: 8}",
                "--model.init_args.lr",
                "0.05",
                "--model.init_args.rewards",
                "{helpers.rewards.varied_reward: 1.0}",
            ),
        ]
    )
    module = cli.model
    moved = [n for n, p in module.policy.named_parameters() if "lora_B" in n and p.abs().sum() > 0]
    assert moved  # lora_B starts at zero; after two steps it is not
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")  # a plain model, adapters merged
    merged = module.policy.merge_and_unload() if hasattr(module.policy, "merge_and_unload") else module.policy
    for p, q in zip(exported.parameters(), merged.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_8bit_reference_is_the_policy_quantized(tiny_model_and_tokenizer):
    """Each int8 linear layer of the reference holds the policy's weights to within one quantization step
    of its row (LLM.int8's absmax scheme: ``W ~ CB * SCB / 127``; rounding is half a step, and the fp16
    cast before quantizing adds at most 2^-11 relative). A reference that is not the policy's copy, or a
    layer left out, is off by whole weights, far beyond that."""
    module = GRPOModule(model="tiny:random", beta=0.04, reference_quantization="8bit")
    policy_layers = dict(module.policy.named_modules())
    checked = 0
    for name, layer in module.reference.named_modules():
        if "Linear8bitLt" not in type(layer).__name__:
            continue
        weight = layer.weight
        dequantized = weight.CB.float() * weight.SCB.float()[:, None] / 127
        original = policy_layers[name].weight.detach()
        step = original.abs().amax(1, keepdim=True) / 127
        assert ((dequantized - original).abs() <= step).all(), name
        checked += 1
    layers = module.policy.config.num_hidden_layers
    assert checked == 7 * layers  # q, k, v, o, gate, up, down in every layer (the LM head stays whole)
    gen = module.generator.generate(module.policy, ["1 + 2", "3 + 4"], SamplingConfig(max_new_tokens=6))
    module.policy.eval()
    ref = module.reference_logprobs(gen, plan_micro_batches(gen))
    policy = batched_logprobs(module.policy, gen, 1.0)
    mask = gen.completion_mask.bool()
    assert ref.shape == policy.shape and torch.isfinite(ref[mask]).all()
    assert not torch.equal(ref[mask], policy[mask])  # the int8 layers are in the reference's forward


def test_qlora_4bit_trains_on_cpu(tmp_path):
    cli = main(
        [
            "fit",
            *_fast(
                tmp_path,
                "--trainer.max_steps",
                "1",
                *NO_EVAL,
                "--model.init_args.lora",
                "{r: 4, alpha: 8}",
                "--model.init_args.quantization",
                "4bit",
                "--model.init_args.rewards",
                "{helpers.rewards.varied_reward: 1.0}",
            ),
        ]
    )
    assert cli.trainer.global_step == 1
    assert any("Linear4bit" in type(m).__name__ for m in cli.model.policy.modules())
    assert (Path(tmp_path) / "hf" / "adapter_config.json").exists()  # QLoRA exports the adapters


@pytest.mark.parametrize("name", ["adamw", "adamw_8bit", "paged_adamw_8bit", "paged_adamw"])
def test_each_optimizer_steps_against_the_gradient(name):
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(64, 64))
    optimizer = build_optimizer(name, [weight], lr=1e-2, weight_decay=0.0, betas=(0.9, 0.99))
    before = weight.detach().clone()
    (weight**2).sum().backward()
    optimizer.step()
    # every optimizer moves the weights against the gradient (2 w): |w| shrinks
    assert weight.detach().norm() < before.norm()


def test_8bit_optimizer_and_token_budget_in_a_run(tmp_path):
    cli = main(
        [
            "fit",
            *_fast(
                tmp_path,
                "--trainer.max_steps",
                "1",
                *NO_EVAL,
                "--model.init_args.optimizer",
                "adamw_8bit",
                "--model.init_args.micro_batch_tokens",
                "600",
                "--model.init_args.gradient_checkpointing",
                "true",
            ),
        ]
    )
    assert cli.trainer.global_step == 1
    assert type(cli.trainer.optimizers[0]).__name__ == "AdamW8bit"


def test_shared_prompt_prefix_matches_the_full_forward_with_gradients(tiny_model_and_tokenizer):
    from r1_lightning.generation.forward import shared_prefix_logprobs

    model, tokenizer = tiny_model_and_tokenizer
    torch.manual_seed(0)
    prompts = [p for p in ["1 + 2", "a much longer prompt here: 12 + 7", "3"] for _ in range(4)]
    gen = TorchGenerator(tokenizer).generate(model, prompts, SamplingConfig(max_new_tokens=8), group_size=4)
    assert gen.input_ids.shape[0] == 12
    assert torch.equal(gen.input_ids[0, : gen.prompt_length], gen.input_ids[3, : gen.prompt_length])
    model.train()
    weights = torch.randn(gen.completion_mask.shape) * gen.completion_mask

    def grads(fn):
        model.zero_grad()
        logprobs, entropy = fn()
        ((logprobs * weights).sum() + (entropy * weights).sum()).backward()
        return logprobs.detach(), [p.grad.clone() for p in model.parameters()]

    full, full_grads = grads(
        lambda: completion_logprobs(model, gen.input_ids, gen.attention_mask, gen.prompt_length, with_entropy=True)
    )
    groups = torch.arange(12) // 4
    shared, shared_grads = grads(
        lambda: shared_prefix_logprobs(
            model, gen.input_ids, gen.attention_mask, gen.prompt_length, groups, with_entropy=True
        )
    )
    mask = gen.completion_mask.bool()
    torch.testing.assert_close(shared[mask], full[mask], atol=1e-5, rtol=1e-5)
    for a, b in zip(shared_grads, full_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    # and through trimmed micro-batches that split groups
    planned = batched_logprobs(model, gen, 1.0, plan_micro_batches(gen, max_tokens=40), group_size=4)
    torch.testing.assert_close(planned[mask], full[mask], atol=1e-5, rtol=1e-5)


def test_4bit_layers_too_narrow_for_the_avx512_cpu_packing_take_the_portable_path(tmp_path):
    """bitsandbytes repacks 4-bit weights for its AVX-512 CPU kernel; narrow layers cannot be repacked
    (the CI failure on AVX-512 machines). The repacking is plain torch code, so it is checked here on
    any CPU: every layer left on the AVX-512 path repacks, and every layer switched off it would fail."""
    import copy

    from bitsandbytes.functional import _convert_weight_packed_for_cpu
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from r1_lightning.models.loading import load_policy
    from r1_lightning.tiny.base import build_tokenizer

    tokenizer = build_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    Qwen2ForCausalLM(config).save_pretrained(tmp_path)  # 96-wide MLP input: down_proj cannot be repacked
    tokenizer.save_pretrained(tmp_path)
    model, _ = load_policy(str(tmp_path), quantization="4bit")
    layers = {n: m for n, m in model.named_modules() if type(m).__name__ == "Linear4bit"}
    switched = {n for n, m in layers.items() if m.support_avx512bf16_for_cpu is False}
    assert switched == {"model.layers.0.mlp.down_proj"}
    for name, layer in layers.items():
        state = copy.deepcopy(layer.weight.quant_state)
        if name in switched:
            with pytest.raises(RuntimeError):
                _convert_weight_packed_for_cpu(layer.weight.data.clone(), state)
        else:
            _convert_weight_packed_for_cpu(layer.weight.data.clone(), state)
    tiny, _ = load_policy("tiny:random", quantization="4bit")  # 32 wide: nothing can be repacked
    assert all(m.support_avx512bf16_for_cpu is False for m in tiny.modules() if type(m).__name__ == "Linear4bit")


def test_adamw_is_the_fused_kernel_and_steps_as_the_loop_does():
    """TRL's default optimizer (transformers' ``adamw_torch_fused``): one pass per parameter, no temporary the size of
    the parameter (the peak of a step at a 151,936-token vocabulary); the same update as the per-tensor loop."""
    from r1_lightning.models.loading import build_optimizer

    torch.manual_seed(0)
    fused_model, loop_model = torch.nn.Linear(8, 4), torch.nn.Linear(8, 4)
    loop_model.load_state_dict(fused_model.state_dict())
    fused = build_optimizer("adamw", list(fused_model.parameters()), 1e-2, 0.1, (0.9, 0.99))
    loop = torch.optim.AdamW(loop_model.parameters(), lr=1e-2, weight_decay=0.1, betas=(0.9, 0.99), foreach=False)
    assert fused.defaults["fused"] is True
    x = torch.randn(5, 8)
    for _ in range(3):
        for model, optimizer in ((fused_model, fused), (loop_model, loop)):
            optimizer.zero_grad()
            model(x).pow(2).sum().backward()
            optimizer.step()
    for a, b in zip(fused_model.parameters(), loop_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
