"""Data parallelism of one run over several processes (``torch.distributed``, as torchrun
launches them).

One run, one global batch ``B = train.batch_size``, ``W`` processes (*ranks*): rank ``r`` trains
on rows ``[r B/W, (r+1) B/W)`` of every batch. The design, and why ``W`` processes at ``B/W``
rows each give the weights one process gives at ``B`` (up to float rounding):

* *Random numbers.* Every rank holds the run's generators with the same state and draws the
  *global* batch's latents, noise levels, noise, teacher-side samples and regression indices,
  then keeps its own shard (:func:`shard`). The streams thus advance exactly as a single
  process's do, so the state (generators included) is always the single-process state: a
  checkpoint resumes at any world size, and rank ``r``'s rows are the rows a single process
  would put there.
* *Gradients* are summed over ranks and divided by ``W`` (:func:`average_gradients`) after
  the backward pass and before the non-finite guard, clipping and the optimiser step: each
  rank's loss is the mean over its ``B/W`` rows, so the average is the gradient of the global
  mean, and clipping and the guard see the global gradient (every rank takes the same
  decision and the same step; parameters stay equal without being broadcast).
* *Batch statistics* of the weight pipeline are global: the per-noise-bin counts and sums of
  ``1/r`` that feed the running bin means are all-reduced (:func:`all_reduce_sum`), and the
  batch-mean weight normaliser and the logged weight/ratio diagnostics are computed over the
  gathered global batch (:func:`all_gather`). Logged losses are averaged over ranks
  (:func:`all_reduce_mean`).

What stays local is what must: each rank's networks evaluate only its own rows. The price of
exactness: every rank draws the whole batch's random numbers and teacher-side samples (dataset
rows; with ``ratio.teacher_side=teacher`` the teacher's own samples, 35 evaluations each, so
that setting gains little from more ranks), and builds DMD's regression pairs once at the start,
as one process does. Only rank 0 writes files, reports to callbacks and evaluates
(:mod:`dibregman.run`); the other ranks wait for it at the next collective. A seed batch
(``K > 1`` members, :mod:`dibregman.members`) is not split: it is refused
(:func:`check_shardable`).

Launch: ``torchrun --nproc-per-node N -m bench.cli run ...`` (or ``bench run
--nproc-per-node N``, which does this); :func:`setup` reads torchrun's ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` (and ``MASTER_ADDR``/``MASTER_PORT``). A launcher that has
already initialised the process group itself (Ray Train's ``TorchTrainer``, as a sweep trial
with ``workers_per_trial > 1`` does) is adopted as it is: rank and world size always come from
``torch.distributed``, and :func:`setup` then only selects this rank's GPU. Without a process
group every helper here is a no-op (``world_size() == 1``), so a plain run is untouched.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

T = TypeVar("T")

# Rank 0 evaluates alone (and trains a missing image teacher first) while the others wait in a
# collective: the default process-group timeout (10 to 30 min) could cut a long evaluation.
DEFAULT_TIMEOUT = datetime.timedelta(hours=6)


class DataParallelError(ValueError):
    """A run that cannot be split over the processes it was given (message says why)."""


def launched() -> bool:
    """Whether this process was started by torchrun (its environment names ``RANK`` and
    ``WORLD_SIZE``)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(device: torch.device | str = "cpu",
          timeout: datetime.timedelta = DEFAULT_TIMEOUT) -> torch.device:
    """Join the process group torchrun's environment describes, or adopt the one a launcher
    has already initialised; returns this rank's device.

    Backend ``nccl`` for a CUDA run (each rank on GPU ``LOCAL_RANK``, made the current
    device), ``gloo`` otherwise. Idempotent: a process already in a group keeps it (its
    backend, rank and world size are the launcher's; ``timeout`` is then not applied).

    Args:
        device: the run's device (:func:`dibregman.device.resolve_device`); its type picks the
            backend. A CUDA device with an index (``cuda:1``) names this rank's GPU, as a
            launcher that assigns GPUs itself (Ray Train) knows it; without one, ``LOCAL_RANK``.
        timeout: how long a collective waits for the slowest rank.
    """
    device = torch.device(device)
    if device.type == "cuda":
        index = (device.index if device.index is not None
                 else int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(index)
        device = torch.device("cuda", index)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                init_method="env://", timeout=timeout)
    return device


def teardown() -> None:
    """Leave the process group (a no-op outside one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    """The number of ranks of the process group; 1 outside one."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank; 0 outside a process group."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this is rank 0: the one that writes files, evaluates and reports."""
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    """``device`` with this rank's GPU index: ``cuda`` becomes ``cuda:LOCAL_RANK`` (the
    current device :func:`setup` chose) in a process group; anything else is returned as is."""
    if world_size() > 1 and device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def check_shardable(batch_size: int, members: int = 1, world: int | None = None) -> None:
    """Refuse a run that ``world`` ranks (default: this process group's) cannot split.

    Raises:
        DataParallelError: a seed batch (``members > 1``) on more than one rank, or a global
            batch that is not a multiple of the number of ranks.
    """
    world = world_size() if world is None else world
    if world <= 1:
        return
    if members > 1:
        raise DataParallelError(f"a seed batch ({members} seeds in one process) cannot be split "
                                f"over {world} processes; run its seeds one at a time, or "
                                f"with one process")
    if batch_size % world:
        raise DataParallelError(f"train.batch_size={batch_size} is not divisible by the "
                                f"{world} processes: the global batch is split evenly over "
                                f"them (use a multiple of {world})")


def shard(rows: Tensor) -> Tensor:
    """This rank's contiguous share of a global batch: rows ``[r n/W, (r+1) n/W)`` of the
    ``n`` rows of ``rows``; ``rows`` itself on one rank."""
    world = world_size()
    if world == 1:
        return rows
    size = rows.shape[0] // world
    start = rank() * size
    return rows[start:start + size]


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """The elementwise sum of ``tensor`` over ranks (a new tensor; ``tensor`` itself on one
    rank). For counts and sums whose totals must be global (the ratio bins)."""
    if world_size() == 1:
        return tensor
    total = tensor.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def all_reduce_mean(tensor: Tensor) -> Tensor:
    """The elementwise mean of ``tensor`` over ranks; for per-rank means over equal shards
    (the logged losses), this is the mean over the global batch."""
    if world_size() == 1:
        return tensor
    return all_reduce_sum(tensor) / world_size()


def all_gather(tensor: Tensor, dim: int = 0) -> Tensor:
    """Every rank's ``tensor`` concatenated along ``dim`` in rank order: per-sample values of
    the shards back to the global batch (for batch means and quantiles over it)."""
    world = world_size()
    if world == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=dim)


def average_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Replace every gradient by its mean over ranks, in place (one flat all-reduce).

    Each rank's loss is the mean over its shard, so the mean of the ranks' gradients is the
    gradient of the global batch's mean: what one process would compute (DDP's reduction). A
    non-finite gradient on one rank makes every rank's non-finite, so the guard agrees.
    """
    world = world_size()
    grads = [p.grad for p in parameters if p.grad is not None]
    if world == 1 or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
        offset += grad.numel()


def barrier() -> None:
    """Wait for every rank (a no-op on one)."""
    if world_size() > 1:
        dist.barrier()


def from_main(fn: Callable[[], T]) -> T:
    """``fn()`` computed by rank 0 alone and sent to every rank (pickled).

    For what only rank 0 may do or see (reading and writing the run directory, evaluating),
    so every rank takes the same decision. An exception in ``fn`` is raised on every rank: a
    ``ValueError`` as it is (a person's mistake, the CLI's exit 2), anything else on the others
    as a ``RuntimeError`` naming it. On one rank this is ``fn()``.
    """
    if world_size() == 1:
        return fn()
    message: list[Any] = [None]
    error: BaseException | None = None
    if is_main():
        try:
            message[0] = (True, fn())
        except Exception as err:  # sent to the other ranks, then raised here too
            error = err
            sent = err if isinstance(err, ValueError) else RuntimeError(
                f"rank 0 failed: {type(err).__name__}: {err}")
            message[0] = (False, sent)
    dist.broadcast_object_list(message, src=0)
    ok, value = message[0]
    if error is not None:
        raise error
    if not ok:
        raise value
    return value


def main_first(fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0, then on the other ranks: for work that fills a shared cache (training
    a missing image teacher), so it is done once. On one rank this is ``fn()``."""
    if world_size() == 1:
        return fn()
    first: list[T] = []
    from_main(lambda: first.append(fn()))  # the others wait; a failure is raised on every rank
    return first[0] if is_main() else fn()
