"""SFTModule + SFTDataModule: completion-only loss, packing equals the unpacked loss, CLI run exports."""

import pytest
import torch

from r1_lightning.cli.main import main
from r1_lightning.data.records import ArithmeticCoTTask, DatasetRecords, NonReasoningTask
from r1_lightning.data.sft_data import SFTDataModule, pack_examples
from r1_lightning.errors import ConfigError
from r1_lightning.training.sft import SFTModule, packed_attention_mask, response_nll


def _datamodule(tokenizer, packing, **kwargs):
    dm = SFTDataModule(ArithmeticCoTTask(num_records=24), packing=packing, val_size=4, batch_size=32, **kwargs)
    dm.tokenizer = tokenizer
    dm.setup("fit")
    return dm


def test_loss_covers_response_tokens_only(tiny_model_and_tokenizer):
    _, tokenizer = tiny_model_and_tokenizer
    dm = _datamodule(tokenizer, packing=False)
    record = {"prompt": "1 + 2", "response": " <answer>3</answer>"}
    ids, labels = dm.encode(record)
    response = tokenizer(" <answer>3</answer>", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert [t for t in labels if t != -100] == response
    assert ids[-len(response) :] == response and labels.count(-100) == len(ids) - len(response)


def test_response_nll_by_hand():
    logits = torch.log(torch.tensor([[[0.5, 0.5], [0.25, 0.75], [0.9, 0.1]]]))
    labels = torch.tensor([[-100, 1, 0]])  # positions 1, 2 predicted from 0, 1: p = 0.5, 0.25
    loss, count = response_nll(logits, labels)
    assert count == 2 and loss.item() == pytest.approx(
        -(torch.log(torch.tensor(0.5)) + torch.log(torch.tensor(0.25))).item() / 2
    )


def test_packed_batch_has_the_same_loss_and_gradient_as_unpacked(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    module = SFTModule.__new__(SFTModule)
    torch.nn.Module.__init__(module)
    module.policy = model
    losses, grads = [], []
    for packing in (False, True):
        dm = _datamodule(tokenizer, packing, max_length=128, template="plain")
        rows = dm.train_rows
        assert (len(rows) < 20) == packing  # 20 examples; packed into fewer rows
        batch = dm.collate(rows)
        model.zero_grad()
        # token-mean over every response token either way
        loss, count = module.forward_loss(batch)
        loss.backward()
        losses.append(loss.item())
        grads.append(model.model.embed_tokens.weight.grad.clone())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_packing_fills_rows_to_the_length_and_masks_prompts():
    assert [len(r) for r in pack_examples([([1] * 4, [1] * 4)] * 3, 8)] == [2, 1]
    mask = packed_attention_mask(torch.tensor([[0, 0, 1, -1]]))[0, 0]
    assert mask[2, :2].sum() == 0 and mask[3].tolist() == [False, False, False, True]


def test_missing_column_is_named(tiny_model_and_tokenizer):
    _, tokenizer = tiny_model_and_tokenizer
    dm = SFTDataModule(NonReasoningTask(num_records=8), response_column="solution", val_size=2)
    dm.tokenizer = tokenizer
    with pytest.raises(
        ValueError, match="no column 'solution'.*it has \\['answer', 'language', 'prompt', 'response'\\]"
    ):
        dm.setup("fit")


def test_dataset_records_reads_saved_datasets_and_files(tmp_path):
    import datasets

    datasets.Dataset.from_list([{"prompt": "a", "response": "b"}]).save_to_disk(str(tmp_path / "ds"))
    assert DatasetRecords(str(tmp_path / "ds")).records() == [{"prompt": "a", "response": "b"}]
    (tmp_path / "x.jsonl").write_text('{"prompt": "c", "response": "d"}\n')
    assert DatasetRecords(str(tmp_path / "x.jsonl")).records()[0]["prompt"] == "c"
    with pytest.raises(ConfigError, match="not a saved dataset folder"):
        DatasetRecords(str(tmp_path)).records()


def test_cold_start_data_never_contains_held_out_problems():
    from r1_lightning.data.tasks import ArithmeticTask

    held_out = {r["prompt"] for r in ArithmeticTask(max_value=19, val_size=64).val_records(0)}
    assert not held_out & {r["prompt"] for r in ArithmeticCoTTask(num_records=300).records()}


def test_sft_cli_run_lowers_the_loss_and_exports(tmp_path):
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "max_steps": 12,
            "logger": False,
            "default_root_dir": str(tmp_path),
            "enable_progress_bar": False,
            "val_check_interval": 12,
            "check_val_every_n_epoch": None,
        },
        "model": {
            "class_path": "r1_lightning.training.sft.SFTModule",
            "init_args": {"model": "tiny:random", "lr": 0.003, "export_dir": str(tmp_path / "hf")},
        },
        "data": {
            "class_path": "r1_lightning.data.sft_data.SFTDataModule",
            "init_args": {
                "source": {
                    "class_path": "r1_lightning.data.records.ArithmeticCoTTask",
                    "init_args": {"num_records": 64},
                },
                "packing": True,
                "batch_size": 4,
            },
        },
    }
    import yaml

    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(config))
    cli = main(["fit", "--config", str(tmp_path / "sft.yaml")])
    dm = cli.datamodule
    first = SFTModule("tiny:random").forward_loss(dm.collate(dm.val_rows))[0].item()
    trained = cli.model.forward_loss(dm.collate(dm.val_rows))[0].item()
    assert trained < first - 0.5
    assert (tmp_path / "hf" / "config.json").exists()
    # `r1-lightning export` takes an SFT checkpoint as well as a GRPO one
    (checkpoint,) = (tmp_path / "checkpoints").glob("*.ckpt")
    main(["export", "--ckpt_path", str(checkpoint), "--out_dir", str(tmp_path / "exported")])
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "exported")
    for p, q in zip(exported.parameters(), cli.model.policy.parameters(), strict=True):
        torch.testing.assert_close(p, q)


@pytest.mark.parametrize("packing", [False, True])
def test_chunked_response_loss_equals_full_logits_in_value_and_gradient(tiny_model_and_tokenizer, packing):
    """The default path (logprob_chunk_size 1024; here 5, so batches span many chunks) runs the output head
    on response tokens only; the loss and every gradient equal those of full logits."""
    model, tokenizer = tiny_model_and_tokenizer
    batch = _datamodule(tokenizer, packing, max_length=128, template="plain").collate(
        _datamodule(tokenizer, packing, max_length=128, template="plain").train_rows
    )
    results = []
    for chunk in (0, 5):
        module = SFTModule.__new__(SFTModule)
        torch.nn.Module.__init__(module)
        module.policy = model
        module.logprob_chunk = chunk
        model.zero_grad()
        loss, count = module.forward_loss(batch)
        loss.backward()
        results.append((loss.item(), int(count), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (full, full_count, full_grads), (chunked, count, grads) = results
    assert count == full_count and chunked == pytest.approx(full, rel=1e-6)
    for name, grad in full_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    with pytest.raises(ValueError, match="`logprob_chunk_size` must be a whole number"):
        SFTModule("tiny:random", logprob_chunk_size=-2)
