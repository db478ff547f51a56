"""``train(config) -> summary``: one rule, one model, one dataset, one seed.

Short and top to bottom (DESIGN.md principle 5); it never branches on the rule's name. Writes
the run directory (see :mod:`biograd.rundir`): config.yaml, metrics.csv (one row per
epoch), alignment.csv (every ``alignment_every`` steps), checkpoint.pt (+ the previous
``keep_checkpoints - 1``, verified by SHA-256 on resume), summary.json. The model and rule live
on ``cfg.device`` (:mod:`biograd.runner.device`). Under torchrun it trains data-parallel
(:mod:`biograd.runner.distributed`); only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from biograd import rundir, runlock
from biograd.core.errors import CheckpointError, ConfigError
from biograd.core.registry import create_rule, rule_info
from biograd.core.rule import LearningRule
from biograd.runner.config import Config
from biograd.runner.data import RunData, load_data, on_device_if_it_fits
from biograd.runner.device import thread_count
from biograd.runner.distributed import Dist, from_env
from biograd.runner.measure import StepGuard, accuracy, angles
from biograd.runner.models import build_model
from biograd.runner.tally import METRIC_PREFIX, Tally
from biograd.runner.validate import check_names, check_supported
from biograd.runner.yamlio import write_yaml


def run_dir_of(cfg: Config) -> Path:
    """``out_dir/run_name`` (default name: ``rule-model-dataset-s<seed>``)."""
    name = cfg.run_name or f"{cfg.rule}-{cfg.model}-{cfg.dataset}-s{cfg.seed}"
    return Path(cfg.out_dir) / name


def rule_args_of(cfg: Config) -> dict[str, Any]:
    """``cfg.rule_args``, plus the run's ``weight_decay`` for a rule that applies the network's
    weight decay itself (``WEIGHT_DECAY_HPARAM``: Kolen-Pollack's lambda on W and B) unless
    ``rule_args`` sets it; a run with ``weight_decay=0`` keeps the rule's own default."""
    args = dict(cfg.rule_args)
    key = rule_info(cfg.rule).cls.WEIGHT_DECAY_HPARAM
    if key is not None and cfg.weight_decay > 0 and key not in args:
        args[key] = cfg.weight_decay
    return args


def feedback_schedule(cfg: Config, rule: LearningRule) -> tuple[int, int]:
    """Feedback-only epochs ``(before training, after each epoch)``: the config's
    ``feedback_epochs`` / ``extra_feedback_epochs``, or the rule's ``FEEDBACK_EPOCHS`` where
    null; ConfigError if asked of a rule without a feedback-only phase."""
    before, after = type(rule).FEEDBACK_EPOCHS
    before = before if cfg.feedback_epochs is None else cfg.feedback_epochs
    after = after if cfg.extra_feedback_epochs is None else cfg.extra_feedback_epochs
    has_phase = type(rule).feedback_only_step is not LearningRule.feedback_only_step
    if (before or after) and not has_phase:
        raise ConfigError(
            f"config keys 'feedback_epochs'/'extra_feedback_epochs': rule {cfg.rule!r} trains "
            f"no feedback of its own, so it has no feedback-only epochs; leave them null"
        )
    return before, after


def feedback_epochs(cfg: Config, rule: LearningRule, x: Tensor, y: Tensor, count: int,
                    tag: int, ddp: Dist | None = None) -> float:
    """``count`` feedback-only passes over the training set (own shuffles, seeded by the run's
    seed and ``tag``: 0 before training, ``e`` after epoch ``e``); returns seconds. ``ddp``:
    the process group (None: this process alone)."""
    ddp = Dist() if ddp is None else ddp
    t0 = time.perf_counter()
    for k in range(count):
        order = torch.Generator().manual_seed(cfg.seed * 100_003 + 50_021 * (tag + 1) + k)
        for index in torch.randperm(len(x), generator=order).to(x.device).split(cfg.batch_size):
            ddp.feedback_step(rule, x, y, index)
    return time.perf_counter() - t0


def make_optimizer(cfg: Config, rule: LearningRule) -> torch.optim.Optimizer:
    """SGD or Adam over ``rule.param_groups(feedback_lr)``; feedback weight decay defaults to
    ``weight_decay``. Parameters the rule decays itself (Kolen-Pollack's W and B) are in groups
    pinned to ``weight_decay=0``; ``feedback_weight_decay`` cannot reach them (ConfigError)."""
    groups = rule.param_groups(cfg.feedback_lr)
    if cfg.feedback_weight_decay is not None:
        if any(g["name"] == "feedback/rule_decay" for g in groups):
            raise ConfigError(
                f"config key 'feedback_weight_decay': rule {cfg.rule!r} applies its own weight "
                f"decay to its feedback weights (rule_args.{rule.WEIGHT_DECAY_HPARAM}), so "
                f"feedback_weight_decay would not reach them; drop it, or set "
                f"--rule_args.{rule.WEIGHT_DECAY_HPARAM}=0 to let the optimizer decay them"
            )
        for group in groups:
            if group["name"] == "feedback":
                group["weight_decay"] = cfg.feedback_weight_decay
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def tensorboard_writer(cfg: Config) -> Any:
    """TensorBoard's SummaryWriter class if ``cfg.tensorboard`` (ConfigError if missing)."""
    if not cfg.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(
            "config key 'tensorboard' is true but the tensorboard package is not installed; "
            "pip install 'biograd[tensorboard]' or set --tensorboard=false"
        ) from None
    return SummaryWriter


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def epoch_batches(seed: int, epoch: int, n: int, batch_size: int,
                  device: torch.device | None = None) -> tuple[Tensor, ...]:
    """The sample indices of each batch of ``epoch`` for a run of ``seed`` over ``n`` training
    samples: the order every run trains in (a fresh permutation per epoch, drawn from a
    generator seeded by the run's seed and the epoch), so that a probe can replay it; moved to
    ``device`` in one transfer."""
    order = torch.randperm(n, generator=_epoch_generator(seed, epoch))
    return (order if device is None else order.to(device)).split(batch_size)


def _resume_state(out: Path, ddp: Dist) -> tuple[dict[str, Any], list[Path]]:
    """Rank 0 reads the newest good checkpoint (saying which newer ones it refused) and sends
    it to the other ranks."""
    def load() -> tuple[dict[str, Any], list[Path]]:
        if not out.is_dir():
            raise CheckpointError(f"cannot resume: run directory {str(out)!r} does not exist")
        state, path, refused = rundir.load_latest_checkpoint(out)
        for _, why in refused:
            print(f"biograd: warning: {why}; falling back to {path.name}", file=sys.stderr,
                  flush=True)
        return state, [p for p, _ in refused]

    found = [ddp.on_main(load)]
    if ddp.enabled:
        torch.distributed.broadcast_object_list(found, src=0)
    return found[0]


def train(cfg: Config, *, overwrite: bool = False, resume: bool = False) -> dict[str, Any]:
    """Train ``cfg.rule`` and return the summary (also written to ``summary.json``).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every process calls this; see
    :mod:`biograd.runner.distributed`. :class:`biograd.runlock.RunBusyError` when another
    process is training the same run directory (:mod:`biograd.runlock`).
    """
    check_names(cfg)
    check_supported(cfg)
    ddp = from_env(cfg.device, cfg.dist_backend)
    try:  # one process per run directory (rank 0 holds it for the group)
        with runlock.hold(run_dir_of(cfg)) if ddp.is_main else contextlib.nullcontext():
            return _train(cfg, ddp, overwrite=overwrite, resume=resume)
    finally:
        ddp.close()


@dataclass
class _Run:
    """What one training run holds while it trains (built by :func:`_train`)."""

    cfg: Config
    ddp: Dist
    out: Path
    data: RunData
    rule: LearningRule
    opt: torch.optim.Optimizer
    sched: Any
    train_x: Tensor
    train_y: Tensor
    history: list[dict[str, Any]]
    align_rows: list[dict[str, Any]]
    writer: Any
    guard: StepGuard
    step: int
    first_step: int = 0  # the step this invocation started at (a fresh or resumed process)
    started: float = field(default_factory=time.perf_counter)
    status: str = "completed"
    reason: str | None = None
    truncated: bool = False

    def checkpoint(self, epoch: int, batch: int, partial: dict[str, Any]) -> None:
        """Save everything a resume needs (rank 0)."""
        if self.ddp.is_main:
            dev, sched = self.ddp.device, self.sched
            rundir.save_checkpoint(self.out, {
                "format": 1, "epoch": epoch, "batch": batch, "step": self.step,
                "partial": partial, "rule": self.rule.state_dict(),
                "optimizer": self.opt.state_dict(),
                "scheduler": sched.state_dict() if sched is not None else None,
                "torch_rng": torch.get_rng_state(), **rundir.host_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None,
                "history": self.history, "alignment": self.align_rows,
                "config": self.cfg.to_dict(),
            }, keep=self.cfg.keep_checkpoints)


def seeded_data_and_model(cfg: Config) -> tuple[RunData, torch.nn.Module]:
    """A run's start: torch's thread count, the Python / NumPy / torch seeds, the data and the
    model initialised from ``cfg.seed`` (reseeded after loading, so the initialisation does
    not depend on what loading drew), as :func:`train` does; probes that replay a run call it
    too."""
    torch.set_num_threads(thread_count(cfg.threads))
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    data = load_data(cfg)
    torch.manual_seed(cfg.seed)
    return data, build_model(cfg.model, data.input_shape, data.num_classes, cfg.model_args)


def _train(cfg: Config, ddp: Dist, *, overwrite: bool, resume: bool) -> dict[str, Any]:
    # -- set up: threads, seeds, data, model, rule, optimizer, scheduler -----------------------
    writer_cls = tensorboard_writer(cfg)
    out = run_dir_of(cfg)
    data, model = seeded_data_and_model(cfg)
    rule = create_rule(cfg.rule, model.to(ddp.device), loss=cfg.loss, **rule_args_of(cfg))
    opt = make_optimizer(cfg, rule)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
             if cfg.scheduler == "cosine" else None)
    train_x, train_y = on_device_if_it_fits(data.train_x, data.train_y, ddp.device)

    # -- resume (or start fresh) and prepare the run directory on rank 0 -----------------------
    ck, refused = _resume_state(out, ddp) if resume else (_fresh_state(), [])
    if resume:
        _restore(cfg, out, ck, rule, opt, sched, ddp.device)
    history: list[dict[str, Any]] = list(ck["history"])
    align_rows: list[dict[str, Any]] = list(ck["alignment"])
    ddp.on_main(lambda: _start_run_dir(cfg, out, history, align_rows, refused,
                                       overwrite=overwrite, resume=resume))
    writer = writer_cls(str(out / "tensorboard")) if writer_cls and ddp.is_main else None
    run = _Run(cfg, ddp, out, data, rule, opt, sched, train_x, train_y, history, align_rows,
               writer, StepGuard(rule, cfg.max_loss), int(ck["step"]), int(ck["step"]))

    # -- train: feedback-only epochs where the rule asks for them, then epoch by epoch ---------
    fb_before, fb_after = feedback_schedule(cfg, rule)
    fb_seconds = 0.0  # feedback-only epochs count into the next epoch's seconds
    if fb_before and not resume:
        fb_seconds = feedback_epochs(cfg, rule, train_x, train_y, fb_before, 0, ddp)
    for epoch in range(int(ck["epoch"]), cfg.epochs):
        first = int(ck["batch"]) if epoch == int(ck["epoch"]) else 0
        tally = Tally.from_state(ck["partial"]) if first else Tally()
        cut, seconds = _train_epoch(run, epoch, first, tally)
        if run.status == "diverged":
            break
        # -- end of epoch: scheduler, feedback-only epochs, evaluation, logs, checkpoint ------
        if sched is not None:
            sched.step()
        tally.seconds += seconds + fb_seconds
        fb_seconds = 0.0
        if fb_after and not cut and epoch + 1 < cfg.epochs:  # Meulemans et al.'s extra epoch
            tally.seconds += feedback_epochs(cfg, rule, train_x, train_y, fb_after, epoch + 1,
                                             ddp)
        _log_epoch(run, _epoch_row(cfg, rule, data, tally, epoch, run.step,
                                   opt.param_groups[0]["lr"]))
        if not cut:
            run.checkpoint(epoch + 1, 0, {})
        if cfg.stop_after_epochs is not None and cfg.stop_after_epochs <= epoch + 1 < cfg.epochs:
            run.truncated = True
        if run.truncated:
            break

    # -- summary -----------------------------------------------------------------------------
    if writer:
        writer.close()
    steps_per_epoch = len(range(0, len(train_x), cfg.batch_size))
    summary = _summary(cfg, out, history, run.status, run.step, run.reason, run.truncated,
                       rule, steps_per_epoch)
    summary["device"] = str(ddp.device)
    summary["world_size"] = ddp.world_size
    summary["threads"] = torch.get_num_threads()
    if ddp.is_main:
        rundir.write_json(out / rundir.SUMMARY, summary)
    return summary


def warmed_step(opt: torch.optim.Optimizer, step: int, warmup_steps: int) -> None:
    """``opt.step()`` at global step ``step`` (0-based), with every group's rate scaled by
    ``(step + 1) / warmup_steps`` while ``step < warmup_steps`` (linear warm-up) and restored
    after, so the scheduler's own rates are never touched (the cosine schedule's recursive
    form reads them) and a resumed run warms up exactly as an uninterrupted one."""
    if step >= warmup_steps:
        opt.step()
        return
    rates = [g["lr"] for g in opt.param_groups]
    for g, lr in zip(opt.param_groups, rates, strict=True):
        g["lr"] = lr * (step + 1) / warmup_steps
    try:
        opt.step()
    finally:
        for g, lr in zip(opt.param_groups, rates, strict=True):
            g["lr"] = lr


def _train_epoch(run: _Run, epoch: int, first: int, tally: Tally) -> tuple[bool, float]:
    """Train ``epoch`` from batch ``first`` on: step, divergence checks, alignment rows, time
    limit, mid-epoch checkpoints. Returns whether the time limit cut the epoch short and the
    seconds it trained (alignment rows not counted); a divergence sets ``run.status``."""
    cfg, rule, opt, guard = run.cfg, run.rule, run.opt, run.guard
    batches = epoch_batches(cfg.seed, epoch, len(run.train_x), cfg.batch_size,
                            run.train_x.device)
    bar = tqdm(range(first, len(batches)), desc=f"{cfg.rule} epoch {epoch + 1}",
               disable=not (run.ddp.is_main and sys.stderr.isatty()), leave=False)
    t0, cut = time.perf_counter(), False
    probe = slice(0, cfg.alignment_batch)
    for b in bar:
        opt.zero_grad(set_to_none=True)
        loss, correct, count, metrics = run.ddp.step(rule, run.train_x, run.train_y, batches[b])
        run.reason = guard.loss(loss)
        if run.reason is not None:
            run.status = "diverged"
            break
        warmed_step(opt, run.step, cfg.warmup_steps)
        run.ddp.sync_state(rule)
        if run.step == run.first_step:  # a rule may create parameters in its first step
            guard.refresh()
        time_up = bool(cfg.time_limit) and not run.ddp.all_ok(
            time.perf_counter() - run.started <= cfg.time_limit)
        ck_due = bool(cfg.checkpoint_every) and (run.step + 1) % cfg.checkpoint_every == 0
        # every rank checks where rank 0 logs angles (all ranks must stop together)
        align_due = bool(cfg.alignment_every) and (run.step + 1) % cfg.alignment_every == 0
        run.reason = guard.update(run.step + 1, force=time_up or ck_due or align_due
                                  or b + 1 == len(batches))
        if run.reason is not None:  # a non-finite update or parameter: diverged at this step
            run.status = "diverged"
            break
        run.step += 1
        tally.add(loss, correct, count, metrics)
        if not bar.disable:
            bar.set_postfix(loss=f"{loss:.4f}")
        if run.writer:
            run.writer.add_scalar("train/loss", loss, run.step)
            for key, value in metrics.items():
                run.writer.add_scalar(f"train/{METRIC_PREFIX}{key}", value, run.step)
        if run.ddp.is_main and align_due:
            t_a = time.perf_counter()
            run.align_rows.append({"step": run.step, "epoch": epoch + 1,
                                   "train_loss": tally.take_window(),
                                   **angles(rule, run.data.train_x[probe],
                                            run.data.train_y[probe])})
            rundir.write_rows(run.out / rundir.ALIGNMENT, run.align_rows)
            t0 += time.perf_counter() - t_a
        if time_up:
            run.truncated = b + 1 < len(batches) or epoch + 1 < cfg.epochs
            cut = b + 1 < len(batches)
            if cut:
                break
        if ck_due and b + 1 < len(batches):
            run.checkpoint(epoch, b + 1, tally.state(time.perf_counter() - t0))
    bar.close()
    return cut, time.perf_counter() - t0


def _log_epoch(run: _Run, row: dict[str, Any]) -> None:
    """Append ``row`` to metrics.csv (and TensorBoard) and print the epoch's line (rank 0)."""
    run.history.append(row)
    cfg = run.cfg
    if run.ddp.is_main:
        print(f"[{cfg.rule}] epoch {row['epoch']}/{cfg.epochs}: "
              f"train_loss {row['train_loss']:.4f} test_acc {row['test_acc']:.4f} "
              f"({row['seconds']:.1f}s)", file=sys.stderr, flush=True)
        rundir.write_rows(run.out / rundir.METRICS, run.history)
    if run.writer:
        for key, value in row.items():
            if value is not None and key not in ("epoch", "step"):
                run.writer.add_scalar(f"epoch/{key}", value, row["epoch"])


def _fresh_state() -> dict[str, Any]:
    return {"epoch": 0, "batch": 0, "step": 0, "history": [], "alignment": [], "partial": {}}


def _restore(cfg: Config, out: Path, ck: dict[str, Any], rule: LearningRule,
             opt: torch.optim.Optimizer, sched: Any, device: torch.device) -> None:
    """Load a checkpoint's rule, optimizer, scheduler and RNG states (CheckpointError if it
    does not fit this config)."""
    try:
        rule.load_state_dict(ck["rule"])
        opt.load_state_dict(ck["optimizer"])
        if sched is not None and ck.get("scheduler") is not None:
            sched.load_state_dict(ck["scheduler"])
        torch.set_rng_state(ck["torch_rng"])
        if device.type == "cuda" and ck.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(ck["cuda_rng"], device)
        if "python_rng" in ck:
            rundir.set_host_rng_state(ck["python_rng"], ck["numpy_rng"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(
            f"checkpoint in {str(out)!r} does not fit this config (rule {cfg.rule!r}, "
            f"model {cfg.model!r}): {exc}"
        ) from None


def _start_run_dir(cfg: Config, out: Path, history: list[dict[str, Any]],
                   align_rows: list[dict[str, Any]], refused: list[Path], *, overwrite: bool,
                   resume: bool) -> None:
    """Create (or keep, on resume) the run directory and write config.yaml and the rows up to
    the checkpoint (rows a killed run logged after it are dropped)."""
    rundir.prepare(out, overwrite=overwrite, resume=resume)
    rundir.set_aside(refused)
    write_yaml(out / rundir.CONFIG, cfg.to_dict())
    rundir.write_rows(out / rundir.METRICS, history)
    if align_rows:
        rundir.write_rows(out / rundir.ALIGNMENT, align_rows)


def _epoch_row(cfg: Config, rule: LearningRule, data: RunData, tally: Tally,
               epoch: int, step: int, lr: float) -> dict[str, Any]:
    """metrics.csv's row: training averages, test/val accuracy, seconds, lr, angles, and the
    epoch mean of every key of the rule's step metrics (``rule/KEY``)."""
    means = tally.means()
    row: dict[str, Any] = {
        "epoch": epoch + 1, "step": step, "train_loss": means.pop("train_loss"),
        "train_acc": means.pop("train_acc"),
        "test_acc": accuracy(rule, data.test_x, data.test_y, cfg.eval_batch_size),
        "val_acc": (accuracy(rule, data.val_x, data.val_y, cfg.eval_batch_size)
                    if data.val_x is not None else None),
        "seconds": tally.seconds, "lr": lr,
    }
    probe = slice(0, cfg.alignment_batch)
    row.update(angles(rule, data.train_x[probe], data.train_y[probe]))
    row.update(means)
    return row


def _summary(cfg: Config, out: Path, history: list[dict[str, Any]], status: str, step: int,
             reason: str | None, truncated: bool, rule: LearningRule,
             steps_per_epoch: int) -> dict[str, Any]:
    last = history[-1] if history else {}
    trained = sum(r["step"] - (history[i - 1]["step"] if i else 0) for i, r in enumerate(history))
    seconds = sum(r["seconds"] for r in history)
    summary: dict[str, Any] = {
        "status": status, "rule": cfg.rule, "model": cfg.model, "dataset": cfg.dataset,
        "seed": cfg.seed, "run_dir": str(out), "epochs_completed": len(history), "steps": step,
        "steps_per_epoch": steps_per_epoch, "truncated": truncated,
        # per full epoch, from the time per step (a truncated last epoch counts pro rata)
        "seconds_per_epoch": seconds / trained * steps_per_epoch if trained else None,
        "num_parameters": sum(p.numel() for p in rule.forward_parameters()),
    }
    for key in ("train_loss", "train_acc", "test_acc", "val_acc", "angle_update",
                "angle_feedback", "angle_jacobian"):
        summary[key] = last.get(key)
    if status == "diverged":
        summary["diverged"] = {"step": step + 1, "epoch": len(history) + 1, "reason": reason}
    return summary
