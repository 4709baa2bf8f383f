"""Statistics over all ranks, on 2 CPU processes (gloo): batch reward scaling uses every rank's rewards,
as TRL's does (it scales by the std of the gathered batch)."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from r1_lightning.training.losses import global_std, group_advantages

G, PER_RANK = 4, 12  # completions per group, completions per rank


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rewards(rank: int) -> torch.Tensor:
    # ranks' rewards differ in scale, so a per-rank std would differ from the global one
    return torch.rand(PER_RANK, generator=torch.Generator().manual_seed(rank)) * (1 + 4 * rank)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:

        def all_gather(value: torch.Tensor) -> torch.Tensor:
            parts = [torch.empty_like(value) for _ in range(world)]
            dist.all_gather(parts, value)
            return torch.stack(parts)

        local = _rewards(rank)
        advantages = group_advantages(local, G, "batch", batch_std=global_std(local, all_gather))
        torch.save(advantages, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_batch_scaling_on_two_ranks_uses_the_std_of_all_ranks_rewards_as_trl_does(tmp_path):
    from trl.trainer.utils import nanstd  # TRL's own std of the gathered rewards

    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ours = torch.cat([torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)])
    gathered = torch.cat([_rewards(0), _rewards(1)])
    # TRL 1.16, scale_rewards="batch": (r - group mean) / (nanstd(all rewards) + 1e-4), with nanstd the
    # sample std; this project uses the population std throughout (the paper's), a factor sqrt((N-1)/N).
    n = gathered.numel()
    centered = gathered - gathered.view(-1, G).mean(1).repeat_interleave(G)
    trl = centered / (nanstd(gathered) * ((n - 1) / n) ** 0.5 + 1e-4)
    torch.testing.assert_close(ours, trl, rtol=1e-5, atol=1e-6)
    # and a rank's own std would not do: the ranks' scales differ
    local_only = torch.cat([group_advantages(_rewards(r), G, "batch") for r in (0, 1)])
    assert not torch.allclose(ours, local_only, rtol=1e-2)
