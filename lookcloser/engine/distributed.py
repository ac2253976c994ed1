"""Devices and the distributed set-up through PyTorch's own launcher (``torchrun``).

Under ``torchrun --nproc_per_node=N`` the environment carries RANK, WORLD_SIZE and LOCAL_RANK; we join
the process group (NCCL on GPUs, gloo on CPUs) and rank 0 alone writes files. Without them, everything
runs in one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import LookcloserError


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; a CUDA request without a GPU is a clear error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise LookcloserError(f"device {name!r} was requested but no CUDA GPU is visible; use --device cpu")
    if not (name == "cpu" or name.startswith("cuda")):
        raise LookcloserError(f"device must be auto, cpu or cuda[:N], got {name!r}")
    return torch.device(name)


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str) -> DistInfo:
    """Join the process group when launched by torchrun; return this process's place in it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_true(flag: bool, info: DistInfo, device) -> bool:
    """True when ``flag`` holds on every process."""
    if not info.enabled:
        return flag
    t = torch.tensor([0.0 if flag else 1.0], device=device)
    dist.all_reduce(t)
    return t.item() == 0


def all_sum(values: list[float], info: DistInfo, device) -> list[float]:
    """Element-wise sums of ``values`` over every process (float64, one all-reduce)."""
    if not info.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_max(value: float, info: DistInfo, device) -> float:
    """The largest ``value`` over every process."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item()


def gather_objects(obj, info: DistInfo) -> list:
    """Every process's ``obj`` (picklable), in rank order, on every process."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


class GlobalBatchSampler:
    """This process's share of each global batch, drawn so that the run does not depend on its spread.

    Every epoch shuffles the whole data set with a generator seeded by (seed, epoch) and cuts it into
    global batches of ``batch_size × world_size`` images; process ``rank`` takes the ``rank``-th slice of
    ``batch_size`` of each. One process with batch 2b and two with batch b therefore see the same global
    batches. Each index comes with the seed of its augmentation (:func:`lookcloser.data.sample_seed`), so
    an image is augmented the same way whichever process or loader worker reads it. The last incomplete
    global batch is dropped, unless the data set is smaller than one global batch (then it is split evenly).

    Args:
        n: data set size.
        batch_size: images per process per step.
        world_size, rank: the process group.
        seed, epoch: the shuffle and augmentation seeds.
        weights: per-image sampling weights: each epoch then draws ``n`` images with replacement, with
            probabilities proportional to them (a class-balanced epoch: 1 / the image's class count), from the
            same (seed, epoch) generator, each draw augmented with a seed of its own.
    """

    def __init__(self, n: int, batch_size: int, world_size: int, rank: int, seed: int, epoch: int,
                 weights: list[float] | None = None):
        from ..data import sample_seed

        self.sample_seed = sample_seed
        self.n, self.world_size, self.rank, self.seed, self.epoch = n, world_size, rank, seed, epoch
        self.batch_size = batch_size if n >= batch_size * world_size else max(1, n // world_size)
        self.weights = torch.as_tensor(weights, dtype=torch.float64) if weights is not None else None
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Draw the next iteration's order for ``epoch``; that iteration begins at batch ``start`` (a run resumed
        in the middle of the epoch), later ones at the first."""
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.n // (self.batch_size * self.world_size)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        if self.weights is None:
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=g).tolist()
        step = self.batch_size * self.world_size
        start, self.start = self.start, 0
        for k in range(start, len(self)):
            lo = k * step + self.rank * self.batch_size
            share = order[lo:lo + self.batch_size]
            if self.weights is None:
                yield [(i, self.sample_seed(self.seed, self.epoch, i)) for i in share]
            else:  # an image drawn twice is augmented twice, differently: its seed follows the draw
                yield [(i, self.sample_seed(self.seed, self.epoch, self.n + lo + j)) for j, i in enumerate(share)]


class _GlobalBatchNorm:
    """Mixed into a BatchNorm module's class: in training under torchrun, normalize with the statistics of
    the whole global batch (sums all-reduced over the processes, differentiably), so N processes with
    batch b compute what one process with batch N·b computes. Anything else runs the class's own forward.
    timm's ``BatchNormAct2d`` (normalization, then ``drop`` and ``act``) is handled as well.
    """

    def forward(self, x):
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        dims = [d for d in range(x.ndim) if d != 1]
        shape = [1, -1] + [1] * (x.ndim - 2)
        xf = x.float()
        local = torch.tensor([x.numel() / x.shape[1]], dtype=torch.float32, device=x.device)
        packed = all_reduce(torch.cat([xf.sum(dims), local]))  # C sums and the count, in one all-reduce
        n = packed[-1]
        mean = packed[:-1] / n
        # two passes, as one process's BatchNorm computes the variance (E[x²] − mean² loses precision)
        var = all_reduce(((xf - mean.view(shape)) ** 2).sum(dims)) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - m).add_(mean.detach().to(self.running_mean.dtype), alpha=m)
                unbiased = var.detach() * n / (n - 1).clamp_min(1)
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        y = y.to(x.dtype)
        if hasattr(self, "act"):  # timm BatchNormAct
            y = self.act(self.drop(y))
        return y


def convert_global_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """Make every BatchNorm layer of ``model`` normalize with global-batch statistics under torchrun
    (in place; CPU with gloo and GPU with NCCL alike, which PyTorch's SyncBatchNorm, GPU-only, does not)."""
    from torch.nn.modules.batchnorm import _BatchNorm

    classes: dict[type, type] = {}
    for m in model.modules():
        if isinstance(m, _BatchNorm) and not isinstance(m, _GlobalBatchNorm):
            cls = type(m)
            if cls not in classes:
                classes[cls] = type(f"Global{cls.__name__}", (_GlobalBatchNorm, cls), {})
            m.__class__ = classes[cls]
    return model


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
