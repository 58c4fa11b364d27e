"""One Hydra-configured trainer for every registered task plugin.

    python -m beit3_plugins.vl_tasks.train task=vqa model=beit3_base data.root=/data/coco \
        data.tokenizer=/models/beit3.spm model.checkpoint=/models/beit3_base_patch16_224.pth
    torchrun --nproc_per_node 2 -m beit3_plugins.vl_tasks.train task=retrieval ...   # DDP (gloo on CPU)
    python -m beit3_plugins.vl_tasks.train task=vqa ... train.eval_only=true train.predict=true

Config tree: ``configs/vl_tasks`` in the repository, installed as ``beit3_plugins/vl_tasks/configs``
(``vl_train.yaml``, ``task/*.yaml`` = published recipes,
``model/*.yaml``, ``preset/cpu_tiny.yaml``). Outputs under ``train.output_dir``: ``checkpoints/last.pt``
(resumable: weights, optimizer, step, RNG states), ``checkpoints/best.pt``, ``metrics.csv`` (long format:
step, epoch, split, name, value), TensorBoard events in ``tb/``, ``curves.png``, ``metrics.json`` and
``predictions/<task>_<split>.json``.

Exact resume: the sample order of an epoch is a function of (seed, epoch); a checkpoint stores the
position inside the epoch and the torch / numpy / Python RNG states, so a killed run resumed from
``last.pt`` ends with the same weights as an uninterrupted one (with ``data.num_workers=0``; with workers,
resumes at epoch boundaries are exact).
"""
from __future__ import annotations

import contextlib
import csv
import datetime
import json
import logging
import math
import os
import random
import signal
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from beit3_plugins.checkpoint import safe_load
from beit3_plugins.registry import TASKS
from beit3_plugins.runtime import tune_malloc_unless_disabled

from .checkpoints import load_task_checkpoint
from .loop import to_device
from .optim import lr_at_step, param_groups

logger = logging.getLogger("beit3_plugins.vl_tasks.train")


def _config_dir() -> Path:
    """The Hydra config tree: ``beit3_plugins/vl_tasks/configs`` in an installed wheel (setup.py ships
    ``configs/vl_tasks`` there as package data), else ``configs/vl_tasks`` of the source checkout
    (editable installs and running from the repository)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "configs", here.parent / "configs" / "vl_tasks"):
        if (candidate / "vl_train.yaml").is_file():
            return candidate
    return here / "configs"


CONFIG_DIR = _config_dir()

__all__ = ["run", "compose_config", "main", "CONFIG_DIR"]


# ---------------------------------------------------------------------------------------------- config
def compose_config(overrides: List[str], config_dir: Optional[Path] = None):
    """The trainer's config for ``overrides`` (Hydra compose API; used by tests and notebooks)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir or CONFIG_DIR), version_base="1.3"):
        return compose(config_name="vl_train", overrides=list(overrides))


def _plain(node) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True) if not isinstance(node, (dict, list)) else node


# ---------------------------------------------------------------------------------------------- distributed
class _Dist:
    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1

    def init(self, device: torch.device) -> None:
        if self.enabled and not torch.distributed.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=10))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()


def _device(spec: str, dist: _Dist) -> torch.device:
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cuda":
        return torch.device("cuda", dist.local_rank)
    return torch.device(spec)


def _autocast(amp: str, device: torch.device):
    """bf16/fp16 autocast where the device supports it; ``auto`` = bf16 on capable CUDA, off on CPU."""
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "off"
    if amp == "off":
        return contextlib.nullcontext(), None
    if amp not in ("bf16", "fp16"):
        raise ValueError(f"train.amp must be auto, bf16, fp16 or off, got {amp!r}")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None
    return torch.autocast(device_type=device.type, dtype=dtype), scaler


# ---------------------------------------------------------------------------------------------- rng / io
def _rng_state() -> Dict[str, Any]:
    """RNG states as tensors and plain Python values, so that ``last.pt`` also loads with
    ``torch.load(weights_only=True)`` (e.g. as ``model.checkpoint`` of another run)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class MetricLog:
    """metrics.csv (long format) + TensorBoard; on resume, rows after the checkpoint's step are dropped."""

    FIELDS = ["step", "epoch", "split", "name", "value"]

    def __init__(self, out: Path, enabled: bool, tensorboard: bool, resume_step: Optional[int]) -> None:
        self.path = out / "metrics.csv"
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        rows = []
        if resume_step is not None and self.path.is_file():
            with self.path.open() as handle:
                rows = [r for r in csv.DictReader(handle) if int(r["step"]) <= resume_step]
        with self.path.open("w", newline="") as handle:
            w = csv.DictWriter(handle, fieldnames=self.FIELDS)
            w.writeheader()
            w.writerows(rows)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:  # tensorboard is an extra of beit3-plugins[vl]
                raise ImportError("train.tensorboard=true needs `pip install tensorboard` "
                                  "(or set train.tensorboard=false)") from exc
            self.writer = SummaryWriter(str(out / "tb"), purge_step=resume_step + 1 if resume_step else None)

    def log(self, step: int, epoch: int, split: str, values: Dict[str, float]) -> None:
        if not self.enabled:
            return
        with self.path.open("a", newline="") as handle:
            w = csv.DictWriter(handle, fieldnames=self.FIELDS)
            for name, value in values.items():
                w.writerow({"step": step, "epoch": epoch, "split": split, "name": name, "value": float(value)})
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(f"{split}/{name}", float(value), step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def plot_curves(csv_path: Path, out_path: Path) -> Optional[Path]:
    """One panel per (split, metric) of metrics.csv, against the step."""
    if not csv_path.is_file():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: Dict[str, List] = {}
    with csv_path.open() as handle:
        for r in csv.DictReader(handle):
            if r["name"] in ("lr",):
                continue
            series.setdefault(f"{r['split']}/{r['name']}", []).append((int(r["step"]), float(r["value"])))
    if not series:
        return None
    n = len(series)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, (name, pts) in zip(axes.flat, sorted(series.items())):
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker="." if len(xs) < 30 else None)
        ax.set_title(name)
        ax.set_xlabel("step")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out_path, dpi=80)
    plt.close(fig)
    return out_path


# ---------------------------------------------------------------------------------------------- build
def build_task(cfg):
    task_spec = _plain(cfg.task)
    task = TASKS.build(task_spec)
    task.set_augmentation(augmentation_of(cfg))
    return task, task_spec["name"]


def augmentation_of(cfg):
    """``train.randaug`` / ``train.mixup`` / ``train.cutmix`` as the tasks' Augmentation switches."""
    from .base import Augmentation

    tc = cfg.train
    return Augmentation(randaug=bool(tc.get("randaug", False)), mixup=float(tc.get("mixup", 0.0) or 0.0),
                        cutmix=float(tc.get("cutmix", 0.0) or 0.0))


def build_model(cfg, task, device: torch.device):
    from beit3_plugins.backbones import build_backbone, is_vlmo
    from beit3_plugins.registry import BACKBONES

    overrides = dict(_plain(cfg.model.get("overrides", {})) or {})
    overrides.setdefault("img_size", int(task.cfg.image_size))
    # every VLMo head reads the output of VLMo's final norm (transformer.norm), whatever the task
    vlmo = is_vlmo(BACKBONES.get(cfg.model.name).config)
    overrides.setdefault("normalize_output", True if vlmo else task.normalize_output)
    overrides.setdefault("drop_path_rate", float(cfg.train.drop_path))
    overrides.setdefault("checkpoint_activations", bool(cfg.train.activation_checkpointing))
    backbone = build_backbone(cfg.model.name, **overrides)
    if task.tokenizer is not None and task.tokenizer.vocab_size > backbone.cfg.vocab_size:
        raise ValueError(f"the tokenizer has {task.tokenizer.vocab_size} ids but {cfg.model.name} only "
                         f"{backbone.cfg.vocab_size} text-embedding rows; use a matching model or tokenizer")
    model = task.build_model(backbone)
    report = None
    if cfg.model.get("checkpoint"):
        report = load_task_checkpoint(model, str(cfg.model.checkpoint), strict_backbone=bool(cfg.model.strict))
    return model.to(device), report


def _tokenizer(cfg):
    if not cfg.data.get("tokenizer"):
        return None
    from beit3_plugins.registry import TOKENIZERS

    # the model config names its tokenizer kind (BEiT-3: sentencepiece, VLMo: BERT WordPiece); data.tokenizer
    # is that tokenizer's file (beit3.spm / vocab.txt)
    return TOKENIZERS.build(str(cfg.model.get("tokenizer", "sentencepiece")), model_path=str(cfg.data.tokenizer),
                            max_length=int(cfg.task.get("max_text_len", 64)))


def _batches(n: int, batch_size: int, world: int, rank: int, seed: int, epoch: int, shuffle: bool = True):
    """Index lists of this rank for one epoch; the order depends only on (seed, epoch)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch)) if shuffle \
        else torch.arange(n)
    global_bs = batch_size * world
    out = []
    for b in range(n // global_bs):
        chunk = order[b * global_bs:(b + 1) * global_bs]
        out.append(chunk[rank * batch_size:(rank + 1) * batch_size].tolist())
    return out


# ---------------------------------------------------------------------------------------------- run
def run(cfg) -> Dict[str, Any]:
    """Train and/or evaluate as ``cfg`` says; returns the final metrics (also written to metrics.json)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    t0 = time.perf_counter()
    tc = cfg.train
    dist = _Dist()
    if tc.get("num_threads"):
        torch.set_num_threads(int(tc.num_threads))  # small CPU models run faster single-threaded on busy hosts
    device = _device(str(tc.device), dist)
    dist.init(device)
    out = Path(str(tc.output_dir))
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out / "checkpoints"
    _seed(int(tc.seed))

    task, task_name = build_task(cfg)
    task.setup(cfg.data.get("root"), _tokenizer(cfg))
    last = ckpt_dir / "last.pt"
    resume = None
    if bool(tc.resume) and last.is_file() and not bool(tc.eval_only):
        resume = safe_load(last)
        task.load_state_dict(resume.get("task", {}))
        logger.info("resuming from %s (epoch %d, step %d)", last, resume["epoch"], resume["global_step"])
    elif cfg.model.get("checkpoint") and str(cfg.model.checkpoint).endswith(".pt"):
        # our own task checkpoints carry task state (e.g. the VQA answer list) next to the weights
        saved = safe_load(str(cfg.model.checkpoint))
        if isinstance(saved, dict) and "task" in saved:
            task.load_state_dict(saved["task"])

    model, report = build_model(cfg, task, device)
    if report is not None and dist.main:
        (out / "load_report.txt").write_text(report.summary() + "\n")
        logger.info(report.summary())
    eval_split = str(tc.eval_split) if tc.get("eval_split") else task.eval_split
    results: Dict[str, Any] = {"task": task_name, "model": str(cfg.model.name), "world_size": dist.world}

    if bool(tc.eval_only):
        if dist.main:
            metrics = _evaluate(task, model, eval_split, device, out, task_name, predict=bool(tc.predict))
            results.update(eval=metrics, skipped=task.skips.as_dict())
            (out / "metrics.json").write_text(json.dumps(results, indent=1))
        dist.barrier()
        return results

    train_ds = task.build_dataset(task.train_split)
    bs, world = int(tc.batch_size), dist.world
    if len(train_ds) < bs * world:
        raise ValueError(f"the {task.train_split} split has {len(train_ds)} samples, fewer than one global batch "
                         f"({bs} x {world} processes); lower train.batch_size")
    steps_per_epoch = len(train_ds) // (bs * world)
    epochs = int(tc.epochs)
    total_steps = epochs * steps_per_epoch
    if tc.get("max_steps"):
        total_steps = min(total_steps, int(tc.max_steps))
    warmup = int(tc.warmup_steps) if tc.get("warmup_steps") is not None else int(float(tc.warmup_epochs) * steps_per_epoch)
    warmup = min(warmup, max(0, total_steps - 1))

    groups = param_groups(model, float(tc.weight_decay), float(tc.layer_decay), float(tc.head_lr_mult))
    optimizer = torch.optim.AdamW([{k: v for k, v in g.items() if k != "param_names"} for g in groups],
                                  lr=float(tc.lr), betas=tuple(tc.betas), eps=float(tc.eps))
    autocast, scaler = _autocast(str(tc.amp), device)
    epoch, step_in_epoch, global_step, best = 0, 0, 0, None
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        if scaler is not None and resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])
        epoch, step_in_epoch, global_step = resume["epoch"], resume["step_in_epoch"], resume["global_step"]
        best = resume.get("best")
        _set_rng_state(resume["rng"])
    train_model = model
    if dist.enabled:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
    log = MetricLog(out, dist.main, bool(tc.tensorboard), global_step if resume is not None else None)
    kill_at = int(tc.get("debug_kill_after_step") or 0)

    def save(path: Path) -> None:
        if not dist.main:
            return
        _atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                      "scaler": scaler.state_dict() if scaler is not None else None, "epoch": epoch,
                      "step_in_epoch": step_in_epoch, "global_step": global_step, "best": best,
                      "rng": _rng_state(), "task": task.state_dict(), "task_name": task_name,
                      "config": _plain(cfg)}, path)

    progress = None
    if dist.main and bool(tc.progress):
        from tqdm.auto import tqdm

        progress = tqdm(total=total_steps, initial=global_step, desc=task_name, dynamic_ncols=True)
    eval_metrics: Dict[str, float] = {}
    done = global_step >= total_steps
    while not done and epoch < epochs:
        model.train()
        batches = _batches(len(train_ds), bs, world, dist.rank, int(tc.seed), epoch)[step_in_epoch:]
        # the loader's own seed comes from a generator tied to (seed, epoch, position), not from the global
        # RNG, so creating it on resume does not shift the random stream of augmentations / drop path
        loader_gen = torch.Generator().manual_seed(int(tc.seed) * 1_000_003 + epoch * 1009 + step_in_epoch)
        loader = torch.utils.data.DataLoader(train_ds, batch_sampler=batches, num_workers=int(cfg.data.num_workers),
                                             collate_fn=lambda items: task.collate(items, train=True),
                                             generator=loader_gen)
        for batch in loader:
            lr = lr_at_step(global_step, total_steps, warmup, float(tc.lr), float(tc.min_lr))
            for g in optimizer.param_groups:
                g["lr"] = lr * g["lr_scale"]
            batch = to_device(batch, device)
            batch["global_step"] = global_step  # step-dependent losses (captioning's drop-worst)
            with autocast:
                outputs = train_model(batch)
            loss = outputs["loss"]
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {loss.item()} at step {global_step}; lower train.lr "
                                         "or check the data")
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            if tc.get("grad_clip"):
                torch.nn.utils.clip_grad_norm_(model.parameters(), float(tc.grad_clip))
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            global_step += 1
            step_in_epoch += 1
            if global_step % int(tc.log_every) == 0 or global_step == total_steps:
                logs = {k: float(v.detach()) for k, v in outputs.items() if isinstance(v, torch.Tensor) and v.numel() == 1}
                logs["lr"] = lr
                log.log(global_step, epoch, "train", logs)
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{loss.item():.4f}")
            if int(tc.save_every_steps) and global_step % int(tc.save_every_steps) == 0:
                save(ckpt_dir / "last.pt")
            if kill_at and global_step == kill_at and dist.main:
                os.kill(os.getpid(), signal.SIGKILL)  # test hook: a hard kill, no clean-up
            if global_step >= total_steps:
                done = True
                break
        epoch_finished = step_in_epoch >= steps_per_epoch or done
        if step_in_epoch >= steps_per_epoch:
            epoch, step_in_epoch = epoch + 1, 0
        if epoch_finished and (done or (int(tc.eval_every_epochs) and epoch % int(tc.eval_every_epochs) == 0)):
            if dist.main:
                eval_metrics = _evaluate(task, model, eval_split, device, out, task_name, predict=done and bool(tc.predict))
                log.log(global_step, epoch, eval_split, eval_metrics)
                value = eval_metrics.get(task.primary_metric)
                if value is not None and (best is None or value > best):
                    best = value
                    _atomic_save({"model": model.state_dict(), "task": task.state_dict(), "task_name": task_name,
                                  "metric": {task.primary_metric: value}, "epoch": epoch}, ckpt_dir / "best.pt")
            dist.barrier()
            model.train()
        save(ckpt_dir / "last.pt")
    if progress is not None:
        progress.close()
    log.close()
    if dist.main:
        if bool(tc.predict) and not eval_metrics:
            eval_metrics = _evaluate(task, model, eval_split, device, out, task_name, predict=True)
        plot_curves(out / "metrics.csv", out / "curves.png")
        results.update(eval=eval_metrics, best={task.primary_metric: best}, steps=global_step,
                       skipped=task.skips.as_dict(), seconds=round(time.perf_counter() - t0, 1))
        dataset_skips = getattr(train_ds, "skips", None)
        if dataset_skips is not None:
            results["train_skipped"] = dataset_skips.as_dict()
        (out / "metrics.json").write_text(json.dumps(results, indent=1, default=str))
    dist.barrier()
    return results


def _evaluate(task, model, split: str, device, out: Path, task_name: str, predict: bool) -> Dict[str, float]:
    dataset = task.build_dataset(split, train=False)
    was_training = model.training
    model.eval()
    try:
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


def _hydra_main():
    import hydra

    @hydra.main(config_path=str(CONFIG_DIR), config_name="vl_train", version_base="1.3")
    def main(cfg) -> None:
        run(cfg)

    return main


def main() -> None:
    tune_malloc_unless_disabled()  # reuse freed memory instead of faulting in fresh pages (runtime.py)
    if not CONFIG_DIR.is_dir():
        raise FileNotFoundError(f"{CONFIG_DIR}: the trainer's config tree is missing (reinstall beit3-plugins; "
                                "the wheel ships configs/vl_tasks as beit3_plugins/vl_tasks/configs)")
    _hydra_main()()


if __name__ == "__main__":
    main()
