"""Training on several workers: one torch.distributed process group, DistributedDataParallel.

A training with ``TrainConfig.workers = N > 1`` runs as N ranks, each a process with the same
data, config and seed (so that each computes the same split, plan and initial weights). What
differs per rank, and how (`segloop.ml.training` calls these hooks only when it has a `Ranks`):

- **Sampling**: rank ``r`` draws its patches from its own RNG stream, seeded ``seed + r``
  (`rank_seed`; rank 0 keeps ``seed``, so one worker is exactly today's run), from its own
  shard of the training cases (`shard_indices`: every N-th case from its rank on; all cases
  when there are fewer cases than ranks).
- **Batch and step budget**: the configured ``batch_size`` is the *global* batch, split evenly
  over the ranks (`batch_per_rank`; it must be a multiple of N), and every rank takes the
  configured number of optimiser steps. One step of N workers therefore sees as many patches as
  one step of one worker, and the gradient DDP averages over the ranks is the gradient of that
  global batch: the same step budget trains on the same amount of data, and the validation
  Dice should match one worker's within noise. The gain is time per step, not more data.
- **Gradients**: the network is wrapped in `DistributedDataParallel` (`Ranks.wrap`) for the
  training forward/backward only; click simulation and validation use the bare network (no
  collective there, so ranks may do different amounts of it).
- **Agreement**: each step, the ranks agree (one all-reduce, `Ranks.agree`) on whether to stop
  (a cancel seen by any rank; rank 0 has the job's cancel flag) and on the elapsed time (the
  largest), so that the learning-rate schedule and the ``max_minutes`` stop are the same on
  every rank and no rank waits in a collective for one that has left.
- **Rank 0 only** validates, reports progress, writes the checkpoint and registers the model
  version; it then shares the version number with the other ranks (`Ranks.share_version`).
  The ranks' summaries (which cases each sampled, a digest of its patches, a checksum of its
  final weights) are gathered into the version's metrics (``metrics["distributed"]``).

The backend is gloo on CPU and NCCL on CUDA. Rank 0 hosts the rendezvous (`Rendezvous`: a
TCPStore on a free port of its address); the other ranks `join` it. Starting the other ranks is
the job layer's business (`segloop.jobs.ray_executor`: Ray actors). A rank that fails destroys
its process group (`Ranks.close`), which breaks the others' pending collectives at once
("Connection closed by peer") instead of after the process group's timeout.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import socket
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

T = TypeVar("T")

TIMEOUT = datetime.timedelta(minutes=30)  # a rank waits this long in a collective (rank 0 validating, saving)
JOIN_TIMEOUT = datetime.timedelta(minutes=5)  # for the other ranks to reach the rendezvous


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s sampling stream: ``seed + rank`` (rank 0 keeps ``seed``)."""
    if rank < 0:
        raise ValueError(f"rank must be >= 0, not {rank}")
    return int(seed) + int(rank)


def shard_indices(n: int, rank: int, world: int) -> list[int]:
    """Indices of the items rank ``rank`` of ``world`` samples from: ``rank, rank + world, ...``;
    every item when there are fewer items than ranks (each rank still has its own RNG stream)."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of {world}")
    if n < world:
        return list(range(n))
    return list(range(rank, n, world))


def batch_per_rank(batch_size: int, world: int) -> int:
    """Each rank's share of the global batch (``batch_size`` must be a multiple of ``world``)."""
    if world < 1 or batch_size < world or batch_size % world:
        raise ValueError(
            f"batch_size {batch_size} cannot be split over {world} workers: the batch size is the global batch, "
            f"make it a multiple of workers"
        )
    return batch_size // world


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


class Rendezvous:
    """Rank 0's side of the rendezvous: a TCPStore on a free port of ``host`` (the address the
    other ranks reach rank 0 at). Create it before starting the others; pass them `port`."""

    def __init__(self, host: str, world: int, timeout: datetime.timedelta = JOIN_TIMEOUT) -> None:
        self.host = host
        self.world = world
        self.store = dist.TCPStore(host, 0, world, is_master=True, wait_for_workers=False, timeout=timeout)
        self.port = int(self.store.port)

    def wait_for_ranks(self, poll: Callable[[], None], interval: float = 0.2) -> None:
        """Wait until ranks 1..N-1 have reached the rendezvous, calling ``poll`` meanwhile (it
        raises to give up: a cancel, a rank that failed before joining). Without it rank 0 would
        wait in ``init_process_group`` for a rank that will never come, for the whole timeout."""
        keys = [_arrived(r) for r in range(1, self.world)]
        while not self.store.check(keys):
            poll()
            time.sleep(interval)


def _arrived(rank: int) -> str:
    return f"segloop/arrived/{rank}"


def node_address() -> str:
    """This machine's address for the rendezvous when no better one is known (Ray gives its node IP)."""
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


@dataclass
class Ranks:
    """This process's place in a distributed training (see the module's docstring)."""

    rank: int
    world: int
    device: torch.device
    backend: str
    shard: list[str] = field(default_factory=list)  # names of the training cases this rank samples from
    batches: int = 0
    patches: int = 0
    sync_seconds: float = 0.0  # time in the per-step agreement: mostly waiting for a slower rank
    _digest: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def seed(self, seed: int) -> int:
        return rank_seed(seed, self.rank)

    def batch(self, batch_size: int) -> int:
        return batch_per_rank(batch_size, self.world)

    def take_shard(self, items: Sequence[T], name: Callable[[T], str]) -> list[T]:
        mine = [items[i] for i in shard_indices(len(items), self.rank, self.world)]
        self.shard = [name(i) for i in mine]
        return mine

    def saw(self, patches: np.ndarray) -> None:
        """Record a sampled batch (its count and a running CRC32 of its bytes, for the summary)."""
        self.batches += 1
        self.patches += int(patches.shape[0])
        self._digest = zlib.crc32(np.ascontiguousarray(patches).tobytes(), self._digest)

    def wrap(self, net: torch.nn.Module) -> torch.nn.Module:
        """``net`` in DistributedDataParallel (for the training step; keep using ``net`` elsewhere).
        No buffer broadcast: ranks run the bare network a different number of times (clicks)."""
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index or 0] if self.device.type == "cuda" else None
        return DistributedDataParallel(net, device_ids=ids, broadcast_buffers=False)

    def agree(self, stop: bool, elapsed: float) -> tuple[bool, float]:
        """Whether any rank wants to stop, and the largest elapsed time (one all-reduce)."""
        t = torch.tensor([1.0 if stop else 0.0, float(elapsed)], dtype=torch.float64, device=self._comm_device)
        t0 = time.perf_counter()
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        self.sync_seconds += time.perf_counter() - t0
        return bool(t[0].item() > 0), float(t[1].item())

    def share_version(self, version: int | None) -> int | None:
        """Rank 0's registered version number (None: rank 0 failed to save) on every rank."""
        box: list[Any] = [version if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self._comm_device)
        return None if box[0] is None else int(box[0])

    def summary(self, net: torch.nn.Module) -> dict[str, Any]:
        """Every rank's record (gathered on all ranks): host, pid, shard, patches and a digest of
        them, and a checksum of its final weights (equal on all ranks: DDP averaged the gradients)."""
        h = hashlib.sha1(usedforsecurity=False)
        for _, p in sorted(net.state_dict().items()):
            h.update(p.detach().cpu().contiguous().numpy().tobytes())
        mine = {
            "rank": self.rank, "host": socket.gethostname(), "pid": os.getpid(), "cases": self.shard,
            "batches": self.batches, "patches": self.patches, "patch_digest": f"{self._digest:08x}",
            "weights_sha1": h.hexdigest(), "sync_seconds": round(self.sync_seconds, 2),
        }
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, mine)
        return {"workers": self.world, "backend": self.backend, "ranks": out}

    @property
    def _comm_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")

    def close(self) -> None:
        """Leave the process group (the other ranks' pending collectives fail at once)."""
        if dist.is_initialized():
            dist.destroy_process_group()


def join(
    rank: int,
    world: int,
    host: str,
    port: int,
    device: torch.device,
    *,
    rendezvous: Rendezvous | None = None,
    timeout: datetime.timedelta = TIMEOUT,
) -> Ranks:
    """Join the process group of ``world`` ranks whose rank 0 listens at ``host:port`` (rank 0
    passes its own `Rendezvous`). Returns when every rank has joined."""
    if world < 2:
        raise ValueError("a distributed training has at least 2 workers")
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of {world}")
    if dist.is_initialized():
        raise RuntimeError("this process is already in a torch.distributed process group")
    if rank == 0:
        if rendezvous is None:
            raise ValueError("rank 0 hosts the rendezvous: pass it")
        store: Any = rendezvous.store
    else:
        store = dist.TCPStore(host, port, world, is_master=False, timeout=JOIN_TIMEOUT)
        store.set(_arrived(rank), "1")
    backend = backend_for(device)
    if device.type == "cuda":
        torch.cuda.set_device(device.index or 0)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)
    return Ranks(rank, world, device, backend)
