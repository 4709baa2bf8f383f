"""A callback the DDP test adds by dotted path: records what each rank saw and ended with."""

import hashlib
import json
from pathlib import Path

import lightning as L
import torch


class RankProbe(L.Callback):
    """Writes ``rank<R>.json``: per step the prompts, group layout and a digest of the policy weights."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.steps: list[dict] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        rollout = batch["rollout"]
        flat = torch.cat([p.detach().flatten().float() for p in pl_module.policy.parameters()])
        self.steps.append(
            {
                "prompts": list(batch["prompt"]),
                "group_size": rollout.group_size,
                "num_completions": int(rollout.rewards.numel()),
                # per group, advantages sum to zero: groups are whole on this rank
                "group_advantage_sums": rollout.advantages.view(-1, rollout.group_size).sum(1).tolist(),
                "weights": hashlib.sha256(flat.numpy().tobytes()).hexdigest(),
                # where this rank's sampling stream stands after the rollout (ranks must differ)
                "rng": hashlib.sha256(torch.get_rng_state().numpy().tobytes()).hexdigest(),
            }
        )

    def on_train_end(self, trainer, pl_module) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.steps))


def probe_args(tmp_path: Path, probe: Path) -> list[str]:
    """What the data-parallel tests add to a shipped command line: 2 steps of a random tiny model with
    varied rewards, the probe, and every file under ``tmp_path``."""
    return [
        "--trainer.accelerator", "cpu", "--trainer.max_steps", "2", "--trainer.val_check_interval", "null",
        "--trainer.limit_val_batches", "0", "--trainer.default_root_dir", str(tmp_path),
        "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--trainer.callbacks+=helpers.ddp_probe.RankProbe", f"--trainer.callbacks.out_dir={probe}",
        "--model.init_args.model", "tiny:random", "--model.init_args.validate_at_start", "false",
        "--model.init_args.validate_at_end", "false",
        "--model.init_args.export_dir", str(tmp_path / "hf"), "--model.init_args.loss_type", "token",
        "--model.init_args.micro_batch_tokens", "400", "--model.init_args.rewards",
        "{helpers.rewards.varied_reward: 1.0}", "--data.init_args.batch_size", "4",
    ]  # fmt: skip
