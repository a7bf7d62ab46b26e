"""Several processes, one model: torch.distributed as launched by ``torchrun``.

``torchrun --standalone --nproc_per_node N -m difflab train ...`` starts N copies of the command,
each with RANK, LOCAL_RANK and WORLD_SIZE in its environment. Each process takes its slice of every global
batch; DistributedDataParallel averages the gradients, so every process takes the same optimiser
step and the weights stay identical. Rank 0 alone writes files and prints.

Without those variables (a plain ``difflab train``) everything here is a no-op for one process,
so the training loop has no separate single-process path.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NoReturn

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    """Where this process stands among the processes of one run."""

    rank: int = 0  # 0 .. world_size - 1 over every node
    local_rank: int = 0  # 0 .. processes on this node - 1; picks the GPU
    world_size: int = 1  # processes in all

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files, logs and progress bars."""
        return self.rank == 0


def env_rank() -> int:
    """This process's rank from torchrun's environment (0 when not launched by torchrun)."""
    return int(os.environ.get("RANK", "0"))


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[tuple[Dist, torch.device]]:
    """Join the process group torchrun describes (NCCL for CUDA, gloo for CPU) for the ``with``.

    Yields this process's ``Dist`` and its device: ``cuda:LOCAL_RANK`` for a CUDA run, so that each
    process on a node drives its own GPU. A group the caller already set up is used and left as is.
    """
    if not launched_by_torchrun():
        yield Dist(), device
        return
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"several processes need device cpu or cuda, not {device}")
    info = Dist(
        rank=int(os.environ["RANK"]),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        world_size=int(os.environ["WORLD_SIZE"]),
    )
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        yield info, device
        if owned:
            wait_for_all()
    finally:
        if owned:
            dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def wait_for_all() -> None:
    """Wait until every process gets here: the processes of a run leave it together.

    Rank 0 writes the last files after the others are done. A process that tore down its group
    meanwhile aborted now and then in gloo (SIGABRT, "terminate called without an active
    exception"), and torchrun failed the whole run: 2 runs in 30 on 2 CPU processes.
    """
    if _active():
        dist.barrier()


# Set on an error that every process raised together: rank 0 reports it for all.
_ON_EVERY_PROCESS = "difflab_raised_on_every_process"


def raise_on_every_process(error: BaseException) -> NoReturn:
    """Raise ``error``, which every process raises at this same point, once all got here.

    The processes leave together (see ``wait_for_all``), and rank 0 alone reports the error for
    all of them (``reported_here``): one message instead of one per process.
    """
    wait_for_all()
    setattr(error, _ON_EVERY_PROCESS, True)
    raise error


def reported_here(error: BaseException) -> bool:
    """Whether this process prints ``error``: rank 0 always, another rank its own errors only."""
    return env_rank() == 0 or not getattr(error, _ON_EVERY_PROCESS, False)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over every process, in place; returns it (unchanged for one process)."""
    if _active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather_all(tensor: torch.Tensor, device: torch.device) -> list[torch.Tensor]:
    """``tensor`` from every process, in rank order, on the CPU (``[tensor]`` for one process).

    Every process calls it, each with a tensor of the same shape and dtype.
    """
    if not _active():
        return [tensor]
    mine = tensor.to(device)  # NCCL moves CUDA tensors only
    parts = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, mine)
    return [part.cpu() for part in parts]


def any_of(flags: Sequence[bool], device: torch.device) -> list[bool]:
    """For each flag: is it true on any process? (The flags themselves for one process.)

    For decisions that one process may take alone (rank 0 could not write the run directory; a
    clock ran out; a signal came): all processes must act alike, or some would wait forever in
    the next collective for the others.
    """
    if not _active():
        return list(flags)
    counts = all_reduce_sum(torch.tensor([float(f) for f in flags], device=device))
    return [count > 0 for count in counts.tolist()]


def rank_slice(batch_size: int, info: Dist) -> slice:
    """This process's part of a global batch: contiguous, sizes differing by at most one."""
    base, extra = divmod(batch_size, info.world_size)
    start = info.rank * base + min(info.rank, extra)
    return slice(start, start + base + (1 if info.rank < extra else 0))
