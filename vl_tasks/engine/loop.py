"""The training loop: epochs of optimisation steps, non-finite losses, evaluation and checkpoints.

Exact resume: the sample order of an epoch is a function of (seed, epoch); a checkpoint stores the position
inside the epoch and the RNG states (``state.py``), so a killed run resumed from ``last.pt`` ends with the same
weights as an uninterrupted one (with ``data.num_workers=0``; with workers, epoch-boundary resumes are exact).

Non-finite losses (``train.nonfinite_loss``): ``skip`` drops that step on every rank (no backward, no update;
the batch counts as consumed so the schedule and resume stay aligned), counts it in the logs, the checkpoint
and ``metrics.json``, and stops once more than ``train.max_nonfinite_skips`` steps were skipped; ``stop``
raises at the first one. Either way the message names the step and the switch.
"""
from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch

from ..batches import to_device
from ..optim import lr_at_step
from .distributed import DistContext
from .logging import MetricLog
from .state import TrainState, atomic_save, rng_state

logger = logging.getLogger("beit3_plugins.vl_tasks.train")

__all__ = ["fit", "evaluate", "shard_indices", "epoch_batches", "NonFiniteLossError", "NonFiniteGuard",
           "NONFINITE_MODES"]

NONFINITE_MODES = ("skip", "stop")


class NonFiniteLossError(FloatingPointError):
    """The loss was NaN/inf and ``train.nonfinite_loss`` says stop (or the skip budget is used up)."""


class NonFiniteGuard:
    """Decides, the same way on every rank, whether a step's loss is usable."""

    def __init__(self, mode: str, max_skips: int, skipped: int = 0) -> None:
        if mode not in NONFINITE_MODES:
            raise ValueError(f"train.nonfinite_loss must be one of {NONFINITE_MODES}, got {mode!r}")
        self.mode, self.max_skips, self.skipped = mode, int(max_skips), int(skipped)

    def should_skip(self, loss: torch.Tensor, step: int, dist: DistContext, device: torch.device) -> bool:
        if not dist.any_true(not bool(torch.isfinite(loss.detach()).all()), device):
            return False
        value = loss.detach().float().cpu().tolist()
        if self.mode == "stop":
            raise NonFiniteLossError(f"non-finite loss {value} at step {step} (on this or another rank); lower "
                                     "train.lr or check the data, or set train.nonfinite_loss=skip")
        self.skipped += 1
        if self.skipped > self.max_skips:
            raise NonFiniteLossError(f"non-finite loss {value} at step {step}: {self.skipped} steps skipped, more "
                                     f"than train.max_nonfinite_skips={self.max_skips}; the run is diverging")
        logger.warning("non-finite loss %s at step %d: step skipped (%d of at most %d)", value, step,
                       self.skipped, self.max_skips)
        return True


def epoch_batches(n: int, batch_size: int, world: int, rank: int, seed: int, epoch: int, shuffle: bool = True
                  ) -> List[List[int]]:
    """Index lists of this rank for one epoch; the order depends only on (seed, epoch)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch)) if shuffle \
        else torch.arange(n)
    global_bs = batch_size * world
    out = []
    for b in range(n // global_bs):
        chunk = order[b * global_bs:(b + 1) * global_bs]
        out.append(chunk[rank * batch_size:(rank + 1) * batch_size].tolist())
    return out


def shard_indices(n: int, batch_size: int, world: int, rank: int) -> range:
    """This rank's block of ``n`` items: whole evaluation batches, consecutive blocks in rank order (so the
    batches, hence the numbers, are those of one process, and the blocks concatenate to the split)."""
    batches = -(-n // batch_size)
    per_rank, extra = divmod(batches, world)
    first = rank * per_rank + min(rank, extra)
    count = per_rank + (1 if rank < extra else 0)
    return range(min(n, first * batch_size), min(n, (first + count) * batch_size))


def _evaluate_sharded(task, model, dataset, device, dist: DistContext):
    """Every rank predicts its block; rank 0 merges the blocks in order and scores (others get ({}, None))."""
    block = torch.utils.data.Subset(dataset, shard_indices(len(dataset), int(task.cfg.eval_batch_size), dist.world,
                                                           dist.rank))
    raw = task.predict(model, block, device)
    parts: List[Any] = [None] * dist.world
    torch.distributed.all_gather_object(parts, (raw, getattr(dataset, "skips", None)))
    if not dist.main:
        return {}, None
    skips = getattr(dataset, "skips", None)
    for rank, (_, other) in enumerate(parts):
        if rank and skips is not None and other is not None:
            skips.merge(other)
    return task.score(task.merge_predictions([p for p, _ in parts]), dataset)


def evaluate(task, model, split: str, device, out: Path, task_name: str, predict: bool,
             dist: Optional[DistContext] = None) -> Dict[str, float]:
    """Evaluate ``split``; with ``dist`` (several processes) every rank must call it: a task that implements
    ``predict`` / ``score`` is sharded over the ranks, another runs on rank 0 alone. Only rank 0 returns
    metrics and writes predictions."""
    sharded = dist is not None and dist.enabled
    if sharded and not dist.main and not task.shardable:
        return {}
    dataset = task.dataset(split, train=False)
    was_training = model.training
    model.eval()
    try:
        if sharded and task.shardable:
            with torch.no_grad():
                metrics, predictions = _evaluate_sharded(task, model, dataset, device, dist)
            if not dist.main:
                return {}
        else:
            metrics, predictions = task.evaluate(model, dataset, device)
    finally:
        model.train(was_training)
    skips = getattr(dataset, "skips", None)
    if skips is not None and skips.total:
        logger.warning("%s %s: %s", task_name, split, skips.report())
        metrics = {**metrics, "skipped_items": float(skips.total)}
    if predict:
        path = task.write_predictions(predictions, out / "predictions" / f"{task_name}_{split}.json")
        logger.info("wrote predictions to %s", path)
    logger.info("%s %s: %s", task_name, split, {k: round(v, 3) for k, v in metrics.items()})
    return metrics


def _optimizer_step(loss, optimizer, scaler, model, grad_clip: Optional[float]) -> None:
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), float(grad_clip))
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


def fit(*, task, task_name: str, model, train_model, train_ds, optimizer, scaler, autocast, tc, dist: DistContext,
        device: torch.device, out: Path, state: TrainState, log: MetricLog, eval_split: str, total_steps: int,
        warmup: int, num_workers: int, checkpoint_extra: Callable[..., Dict[str, Any]]) -> Dict[str, float]:
    """Train until ``total_steps`` (or ``tc.epochs``); ``state`` is advanced in place. Returns the last eval.
    ``checkpoint_extra(metrics=...)``: entries added to every checkpoint (the run config, the model description
    with the metrics of the evaluation that made ``best.pt``)."""
    ckpt_dir = out / "checkpoints"
    bs, world, seed, epochs = int(tc.batch_size), dist.world, int(tc.seed), int(tc.epochs)
    steps_per_epoch = len(train_ds) // (bs * world)
    guard = NonFiniteGuard(str(tc.get("nonfinite_loss", "skip")), int(tc.get("max_nonfinite_skips", 10)),
                           state.nonfinite_skips)
    kill_at = int(tc.get("debug_kill_after_step") or 0)
    kill_in_save_at = int(tc.get("debug_kill_during_save") or 0)
    nan_at = {int(s) for s in (tc.get("debug_nonfinite_loss_steps") or [])}

    def save(path: Path) -> None:
        if not dist.main:
            return
        payload = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                   "scaler": scaler.state_dict() if scaler is not None else None, "epoch": state.epoch,
                   "step_in_epoch": state.step_in_epoch, "global_step": state.global_step, "best": state.best,
                   "nonfinite_skips": state.nonfinite_skips, "rng": rng_state(), "task": task.state_dict(),
                   "task_name": task_name, **checkpoint_extra()}
        atomic_save(payload, path, debug_kill_midway=kill_in_save_at == state.global_step)

    progress = None
    if dist.main and bool(tc.progress):
        from tqdm.auto import tqdm

        progress = tqdm(total=total_steps, initial=state.global_step, desc=task_name, dynamic_ncols=True)
    eval_metrics: Dict[str, float] = {}
    done = state.global_step >= total_steps
    while not done and state.epoch < epochs:
        model.train()
        batches = epoch_batches(len(train_ds), bs, world, dist.rank, seed, state.epoch)[state.step_in_epoch:]
        # the loader's own seed comes from a generator tied to (seed, epoch, position), not from the global
        # RNG, so creating it on resume does not shift the random stream of augmentations / drop path
        loader_gen = torch.Generator().manual_seed(seed * 1_000_003 + state.epoch * 1009 + state.step_in_epoch)
        loader = torch.utils.data.DataLoader(train_ds, batch_sampler=batches, num_workers=num_workers,
                                             collate_fn=lambda items: task.collate(items, train=True),
                                             generator=loader_gen)
        for batch in loader:
            lr = lr_at_step(state.global_step, total_steps, warmup, float(tc.lr), float(tc.min_lr))
            for g in optimizer.param_groups:
                g["lr"] = lr * g["lr_scale"]
            batch = to_device(batch, device)
            batch["global_step"] = state.global_step  # step-dependent losses (captioning's drop-worst)
            with autocast:
                outputs = train_model(batch)
            loss = outputs["loss"]
            if state.global_step + 1 in nan_at:  # test hook: this step's loss becomes NaN
                loss = loss * float("nan")
            skipped = guard.should_skip(loss, state.global_step + 1, dist, device)
            if skipped:
                optimizer.zero_grad(set_to_none=True)
                state.nonfinite_skips = guard.skipped
            else:
                _optimizer_step(loss, optimizer, scaler, model, tc.get("grad_clip"))
            state.global_step += 1
            state.step_in_epoch += 1
            if state.global_step % int(tc.log_every) == 0 or state.global_step == total_steps or skipped:
                logs = {} if skipped else {k: float(v.detach()) for k, v in outputs.items()
                                           if isinstance(v, torch.Tensor) and v.numel() == 1}
                logs.update(lr=lr, nonfinite_skips=state.nonfinite_skips)
                log.log(state.global_step, state.epoch, "train", logs)
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{loss.item():.4f}")
            if int(tc.save_every_steps) and state.global_step % int(tc.save_every_steps) == 0:
                save(ckpt_dir / "last.pt")
            if kill_at and state.global_step == kill_at and dist.main:
                os.kill(os.getpid(), signal.SIGKILL)  # test hook: a hard kill, no clean-up
            if state.global_step >= total_steps:
                done = True
                break
        epoch_finished = state.step_in_epoch >= steps_per_epoch or done
        if state.step_in_epoch >= steps_per_epoch:
            state.epoch, state.step_in_epoch = state.epoch + 1, 0
        every = int(tc.eval_every_epochs)
        if epoch_finished and (done or (every and state.epoch % every == 0)):
            if dist.main:
                eval_metrics = evaluate(task, model, eval_split, device, out, task_name,
                                        predict=done and bool(tc.predict))
                log.log(state.global_step, state.epoch, eval_split, eval_metrics)
                value = eval_metrics.get(task.primary_metric)
                if value is not None and (state.best is None or value > state.best):
                    state.best = value
                    atomic_save({"model": model.state_dict(), "task": task.state_dict(), "task_name": task_name,
                                 "metric": {task.primary_metric: value}, "epoch": state.epoch,
                                 **checkpoint_extra(metrics=eval_metrics)}, ckpt_dir / "best.pt")
            dist.barrier()
            model.train()
        save(ckpt_dir / "last.pt")
    if progress is not None:
        progress.close()
    return eval_metrics
