"""Data-parallel training with ``torch.distributed`` (``torchrun --nproc_per_node=N -m biograd
train ...``).

Every rank builds the same model, rule and optimizer from the same seed and draws the same
seeded permutation of the training set; each global batch (exactly the single-process batch)
is cut into ``world_size`` contiguous shards (``Tensor.tensor_split``, the equivalent of a
``DistributedSampler`` over the runner's own batching) and each rank runs ``rule.step`` on its
shard. Then:

1. :meth:`Dist.reduce_grads` sums ``(n_rank / n_batch) * grad`` over ranks for every parameter
   the optimizer owns (forward and feedback), i.e. the average weighted by shard size, which is
   the full batch's update for every rule whose update is a mean over samples (a ragged last
   batch included); a parameter to which no rank gave a ``.grad`` keeps none;
2. the step's loss sum, correct count and sample count are summed the same way, so every rank
   sees the same loss and takes the same divergence decision (the rule's step metrics, which
   only rank 0 writes, are rank 0's shard's);
3. after ``optimizer.step()``, :meth:`Dist.sync_state` broadcasts from rank 0 what a rule may
   change outside ``.grad``: its buffers, all its parameters outside the model (trainable
   feedback weights and frozen ones trained by an inner loop) and every module's extra state
   (the rule's generator, inner optimizers). All ranks thus hold identical weights.

Only rank 0 writes files. The backend follows the ``device`` config key
(:mod:`biograd.runner.device`): gloo for CPU runs, NCCL for CUDA runs (``cuda:LOCAL_RANK``, one
GPU per process), unless ``dist_backend`` names one (docs/usage.md).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from biograd.core.errors import BiogradError, ConfigError
from biograd.core.rule import LearningRule
from biograd.runner.device import backend_for, local_rank, resolve_device


@dataclass
class Dist:
    """This process's place in the process group (world_size 1: no group, plain training)."""

    rank: int = 0
    world_size: int = 1
    owns_group: bool = False
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files."""
        return self.rank == 0

    def shard(self, index: Tensor) -> Tensor:
        """This rank's contiguous slice of a global batch's sample indices."""
        return index.tensor_split(self.world_size)[self.rank] if self.enabled else index

    def on_main(self, action: Callable[[], Any]) -> Any:
        """Run ``action`` on rank 0 only (file writes); every rank raises if it failed there."""
        result, error = None, None
        if self.is_main:
            try:
                result = action()
            except BiogradError as exc:
                error = exc
        if not self.all_ok(error is None):
            raise error or BiogradError("rank 0 failed to prepare the run (see its output)")
        return result

    def step(self, rule: LearningRule, x_all: Tensor, y_all: Tensor, index: Tensor,
             ) -> tuple[float, float | Tensor, int, dict[str, float]]:
        """``rule.step`` on this rank's shard of the global batch ``index``; returns the whole
        batch's (mean loss, correct count, sample count) and the rule's step metrics, with
        ``.grad`` averaged over ranks. The shard is moved to :attr:`device` (a no-op when the
        dataset is kept there). In one process the correct count stays a tensor (no host sync);
        under torchrun the metrics are this rank's shard's (rank 0's are the ones logged; no
        extra communication)."""
        local = self.shard(index)
        x, y = x_all[local].to(self.device), y_all[local].to(self.device)
        if not self.enabled:
            res = rule.step(x, y)
            return res.loss, (res.output.argmax(-1) == y).sum(), len(y), res.metrics
        loss_sum = correct = 0.0
        metrics: dict[str, float] = {}
        if len(local):  # a ragged last batch may leave a rank without samples
            res = rule.step(x, y)
            loss_sum, correct = res.loss * len(y), float((res.output.argmax(-1) == y).sum())
            metrics = res.metrics
        self.reduce_grads(rule, len(local), len(index))
        loss_sum, correct, count = self.sum([loss_sum, correct, float(len(local))])
        return loss_sum / count, correct, int(count), metrics

    def feedback_step(self, rule: LearningRule, x_all: Tensor, y_all: Tensor,
                      index: Tensor) -> None:
        """``rule.feedback_only_step`` on this rank's shard of ``index``, then rank 0's
        feedback is broadcast (as after a training step, :meth:`sync_state`)."""
        local = self.shard(index)
        if len(local):
            rule.feedback_only_step(x_all[local].to(self.device), y_all[local].to(self.device))
        self.sync_state(rule)

    def all_ok(self, ok: bool) -> bool:
        """True on every rank iff ``ok`` on every rank (so all ranks raise or go on together)."""
        if not self.enabled:
            return ok
        flag = torch.tensor([0.0 if ok else 1.0], device=self.device)
        dist.all_reduce(flag)
        return float(flag) == 0.0

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of ``values`` over ranks (float64)."""
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def reduce_grads(self, rule: LearningRule, n_local: int, n_global: int) -> None:
        """Replace each parameter's ``.grad`` by the shard-size weighted average over ranks."""
        if not self.enabled:
            return
        params = list(rule.parameters())
        # a parameter no rank wrote (e.g. Kolen-Pollack's unused B) keeps .grad None, so the
        # optimizer skips it exactly as in a single process; the flags ride in the same reduce
        has = [p.grad is not None for p in params]
        parts = [
            p.grad.reshape(-1) if h else p.new_zeros(p.numel())  # type: ignore[union-attr]
            for p, h in zip(params, has, strict=True)
        ]
        total = sum(p.numel() for p in params)
        flat = torch.cat([torch.cat(parts) * (n_local / n_global), params[0].new_tensor(has)])
        dist.all_reduce(flat)
        offset = 0
        for p, written in zip(params, flat[total:].tolist(), strict=True):
            n = p.numel()
            if written == 0:
                p.grad = None
            else:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
            offset += n

    @torch.no_grad()
    def sync_state(self, rule: LearningRule) -> None:
        """Broadcast rank 0's buffers, parameters outside the model and extra states."""
        if not self.enabled:
            return
        model = {id(p) for p in rule.model.parameters()}
        own = [p for p in nn.Module.parameters(rule) if id(p) not in model]  # frozen ones too
        for t in [*own, *rule.buffers()]:
            dist.broadcast(t.data, src=0)
        modules = [m for m in rule.modules()
                   if type(m).get_extra_state is not nn.Module.get_extra_state]
        states = [m.get_extra_state() for m in modules]
        dist.broadcast_object_list(states, src=0)
        if not self.is_main:
            for module, state in zip(modules, states, strict=True):
                module.set_extra_state(state)

    def close(self) -> None:
        """Destroy the process group if this object created it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def from_env(device: str = "cpu", backend: str = "auto") -> Dist:
    """Join the process group described by torchrun's environment (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``, ``MASTER_PORT``, ``LOCAL_RANK``), or use one already initialised; world
    size 1 otherwise. ``device`` and ``backend`` are the config keys of the same names: a CUDA
    run uses ``cuda:LOCAL_RANK`` and NCCL unless ``backend`` says otherwise."""
    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size(), device=_this_rank_device(device))
    world = os.environ.get("WORLD_SIZE", "1")
    if not world.isdigit() or int(world) < 1:
        raise ConfigError(f"environment variable WORLD_SIZE must be a positive integer, "
                          f"got {world!r}")
    if int(world) == 1:
        return Dist(device=resolve_device(device))
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ConfigError(
            f"WORLD_SIZE={world} but {', '.join(missing)} not set: launch with "
            f"`torchrun --nproc_per_node=N -m biograd train ...`"
        )
    where = _this_rank_device(device)
    dist.init_process_group(backend=backend_for(where, backend), init_method="env://")
    return Dist(dist.get_rank(), dist.get_world_size(), owns_group=True, device=where)


def _this_rank_device(device: str) -> torch.device:
    """The config's ``device`` for this process (``cuda`` means ``cuda:LOCAL_RANK``), made the
    current CUDA device so collectives and allocations land on this rank's GPU."""
    where = resolve_device(device, local_rank())
    if where.type == "cuda":
        torch.cuda.set_device(where)
    return where
