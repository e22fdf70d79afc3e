"""One command under torchrun: each rank records its shard, rank 0 merges them into `--out`.

Rank r of W records units r, r+W, ... into `<out>.shards/rank-r-of-W.h5`, always with --resume, so a
job that torchrun restarts (`--max-restarts`) continues every rank's shard from its last commit.
When all ranks are done (a gloo barrier of torch.distributed; counts are not all-reduced, the shard
files are added by the store's exact merge), rank 0 writes the merged store to `--out`. An `--out`
containing `{rank}` keeps the older behaviour: one file per rank, merged by the user.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Optional

import torch

from fastneurons.config import RecordConfig, parse_bytes
from fastneurons.devices import rank_device

BARRIER_TIMEOUT = timedelta(days=7)   # ranks of a long recording may finish hours apart


def shard_path(out, rank: int, world: int) -> Path:
    """Where rank `rank` of `world` keeps its shard of `out`."""
    out = Path(out)
    return out.parent / f"{out.name}.shards" / f"rank-{rank}-of-{world}.h5"


@dataclass
class TorchrunJob:
    """This process's part of a torchrun recording."""

    rank: int
    world: int
    out: str             # the merged store
    rank_config: RecordConfig

    def merge(self, log=print) -> Path:
        """Wait for every rank (gloo barrier); rank 0 then adds the shards into `out`."""
        import torch.distributed as dist

        from fastneurons.store import merge_stores

        started = not dist.is_initialized()
        if started:
            dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
        try:
            dist.barrier()
            if self.rank == 0:
                shards = [shard_path(self.out, r, self.world) for r in range(self.world)]
                merge_stores(shards, self.out, parse_bytes(self.rank_config.ngram_memory))
                log(f"merged {self.world} shards into {self.out}")
            dist.barrier()   # nobody reports success before the merged store exists
        finally:
            if started:
                dist.destroy_process_group()
        return Path(self.out)


def torchrun_job(config: RecordConfig, environ=os.environ) -> Optional[TorchrunJob]:
    """The job when torchrun started this process (WORLD_SIZE > 1) and --out names one merged store."""
    world = int(environ.get("WORLD_SIZE", "1"))
    if world <= 1 or config.shard is not None or "{rank}" in config.out:
        return None
    rank = int(environ.get("RANK", "0"))
    path = shard_path(config.out, rank, world)
    path.parent.mkdir(parents=True, exist_ok=True)
    rank_config = dataclasses.replace(config, shard=f"{rank}/{world}", out=str(path), resume=True,
                                      device=_rank_device(config.device, environ))
    return TorchrunJob(rank, world, config.out, rank_config)


def _rank_device(device: str, environ) -> str:
    """The rank's GPU (devices.rank_device) when it records on CUDA, else ``device`` as given."""
    if device in ("auto", "cuda") and torch.cuda.is_available():
        return str(rank_device(int(environ.get("LOCAL_RANK", "0")), torch.cuda.device_count(), environ))
    return device
