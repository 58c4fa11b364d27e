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

This module builds the parts from the config and hands them to the engine (``engine/``): ``distributed``
(process group, device), ``precision`` (AMP), ``state`` (RNG state, atomic checkpoints, output-dir probe),
``logging`` (CSV / TensorBoard / curves) and ``loop`` (the epochs; exact resume after a kill; non-finite
losses skipped and counted or stopping the run, ``train.nonfinite_loss``).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from beit3_plugins.checkpoint import CheckpointMismatchError, safe_load
from beit3_plugins.registry import TASKS
from beit3_plugins.runtime import tune_malloc_unless_disabled

from beit3_plugins.zoo.model_config import MODEL_CONFIG_KEY

from .checkpoints import describe_task_model, load_task_checkpoint
from .config import check_config
from .engine.distributed import DistContext, resolve_device
from .engine.logging import MetricLog, plot_curves
from .engine.loop import evaluate, fit
from .engine.precision import autocast_and_scaler
from .engine.state import (TrainState, check_free_space, prepare_output_dir, rng_state,
                           seed_everything, set_rng_state)
from .optim import param_groups

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
    """The trainer's config for ``overrides`` (Hydra compose API; used by tests and notebooks).

    Hydra keeps the version base of the last ``initialize`` for the whole process; the caller's is put back,
    so fairseq (whose config conversion needs the 1.1 default) still works in the same process afterwards."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.version import VersionBase

    previous = VersionBase.instance().version_base
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir or CONFIG_DIR), version_base="1.3"):
            return compose(config_name="vl_train", overrides=list(overrides))
    finally:
        VersionBase.instance().version_base = previous


def _plain(node) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True) if not isinstance(node, (dict, list)) else node


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
        report = load_task_checkpoint(model, str(cfg.model.checkpoint), strict_backbone=bool(cfg.model.strict),
                                      replace_heads=list(_plain(cfg.model.get("replace_heads", [])) or []))
    return model.to(device), report


def _tokenizer(cfg, task):
    kind = str(cfg.model.get("tokenizer", "sentencepiece"))
    if not _given(cfg.data, "tokenizer"):
        if task.needs_tokenizer:
            raise ValueError(f"task {cfg.task.name} encodes text: set data.tokenizer=<the {kind} model file of "
                             f"{cfg.model.name}> (beit3.spm, `beit3-plugins train-spm`; VLMo: BERT's vocab.txt)")
        return None
    from beit3_plugins.registry import TOKENIZERS

    # the model config names its tokenizer kind (BEiT-3: sentencepiece, VLMo: BERT WordPiece); data.tokenizer
    # is that tokenizer's file (beit3.spm / vocab.txt)
    if not Path(str(cfg.data.tokenizer)).is_file():
        raise FileNotFoundError(f"data.tokenizer={cfg.data.tokenizer}: file not found")
    return TOKENIZERS.build(kind, model_path=str(cfg.data.tokenizer),
                            max_length=int(cfg.task.get("max_text_len", 64)))


def _given(node, key: str) -> bool:
    """Whether ``node.key`` holds a value (``???`` and null do not)."""
    from omegaconf import OmegaConf

    return not OmegaConf.is_missing(node, key) and node.get(key) not in (None, "")


def _data_root(cfg) -> Optional[str]:
    if not _given(cfg.data, "root"):
        return None  # task paths are then absolute or relative to the working directory
    root = str(cfg.data.root)
    if not Path(root).is_dir():
        raise FileNotFoundError(f"data.root={root} is not a directory")
    return root


def _probe_split(task, split: str, dataset=None) -> None:
    """Read ``split``'s files and decode its first item now, so a wrong path (a missing annotation file, an
    image folder with nothing in it) fails before the first step, not at the first evaluation after an epoch
    of training. The errors are the readers' own (``EmptySplitError``, ``FileNotFoundError``, the dataset's
    "no readable record ... is the image root right?"), which name the files. The RNG states are restored,
    so a probed run draws the same augmentations as before."""
    dataset = task.dataset(split, train=False) if dataset is None else dataset
    if len(dataset):
        saved = rng_state()
        try:
            dataset[0]
        finally:
            set_rng_state(saved)


# ---------------------------------------------------------------------------------------------- run
def _check_same_run(cfg, task_name: str, last: Path, saved: Dict[str, Any]) -> None:
    """``train.output_dir`` holding another task's or model's run must not be resumed into this one."""
    was = saved.get("config") or {}
    was_task, was_model = (was.get("task") or {}).get("name", saved.get("task_name")), (was.get("model") or {}).get("name")
    for what, then, now in (("task", was_task, task_name), ("model", was_model, str(cfg.model.name))):
        if then is not None and then != now:
            raise ValueError(f"train.output_dir={cfg.train.output_dir} holds a run of {what} {then} ({last}); this "
                             f"run is {what} {now}. Use another train.output_dir, or train.resume=false to start over "
                             "there (it overwrites that run's checkpoints)")


def _load_resume(cfg, task, task_name: str, last: Path):
    """``last.pt`` when resuming (its task state goes into ``task``); our own ``.pt`` as model.checkpoint
    also carries task state (e.g. the VQA answer list) next to the weights."""
    tc = cfg.train
    if bool(tc.resume) and last.is_file() and not bool(tc.eval_only):
        resume = safe_load(last)
        _check_same_run(cfg, task_name, last, resume)
        task.load_state_dict(resume.get("task", {}))
        logger.info("resuming from %s (epoch %d, step %d)", last, resume["epoch"], resume["global_step"])
        return resume
    if cfg.model.get("checkpoint") and str(cfg.model.checkpoint).endswith(".pt"):
        saved = safe_load(str(cfg.model.checkpoint))
        if isinstance(saved, dict) and "task" in saved:
            task.load_state_dict(saved["task"])
    return None


def _schedule(tc, steps_per_epoch: int):
    total_steps = int(tc.epochs) * steps_per_epoch
    if tc.get("max_steps"):
        total_steps = min(total_steps, int(tc.max_steps))
    warmup = int(tc.warmup_steps) if tc.get("warmup_steps") is not None else int(float(tc.warmup_epochs) * steps_per_epoch)
    return total_steps, min(warmup, max(0, total_steps - 1))


def _checkpoint_bytes(model, optimizer_states: int = 2) -> int:
    """Weights plus AdamW's two moments: what ``last.pt`` holds, to compare with the free space."""
    return sum(p.numel() * p.element_size() for p in model.parameters()) * (1 + optimizer_states)


def run(cfg) -> Dict[str, Any]:
    """Train and/or evaluate as ``cfg`` says; returns the final metrics (also written to metrics.json)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    t0 = time.perf_counter()
    check_config(cfg)   # a '+train.epoch=1' typo is refused, not trained past
    tc = cfg.train
    dist = DistContext()
    out = Path(str(tc.output_dir))
    ckpt_dir = out / "checkpoints"
    if dist.main:  # an unwritable or full output directory fails now, not after the first epoch
        prepare_output_dir(ckpt_dir, setting="train.output_dir")  # also deletes a killed save's temporary
    if tc.get("num_threads"):
        torch.set_num_threads(int(tc.num_threads))  # small CPU models run faster single-threaded on busy hosts
    device = resolve_device(str(tc.device), dist)
    dist.init(device)
    seed_everything(int(tc.seed))

    task, task_name = build_task(cfg)
    task.setup(_data_root(cfg), _tokenizer(cfg, task))
    resume = _load_resume(cfg, task, task_name, ckpt_dir / "last.pt")
    eval_split = str(tc.eval_split) if tc.get("eval_split") else task.eval_split
    # every file the run reads, before the model is built and long before the first evaluation
    train_ds = None if bool(tc.eval_only) else task.dataset(task.train_split)
    if train_ds is not None:
        _probe_split(task, task.train_split, train_ds)
    _probe_split(task, eval_split)
    model, report = build_model(cfg, task, device)
    if report is not None and dist.main:
        (out / "load_report.txt").write_text(report.summary() + "\n")
        logger.info(report.summary())
    results: Dict[str, Any] = {"task": task_name, "model": str(cfg.model.name), "world_size": dist.world}

    if bool(tc.eval_only):
        # under torchrun every rank evaluates a block of the split (engine.loop.evaluate); train.amp applies
        autocast, _ = autocast_and_scaler(str(tc.amp), device)
        task.progress = bool(tc.progress) and dist.main
        with autocast:
            metrics = evaluate(task, model, eval_split, device, out, task_name, predict=bool(tc.predict), dist=dist)
        if dist.main:
            results.update(eval=metrics, skipped=task.skips.as_dict())
            _add_controls(tc, task, model, eval_split, device, results)
            (out / "metrics.json").write_text(json.dumps(results, indent=1))
        dist.barrier()
        return results

    bs = int(tc.batch_size)
    if len(train_ds) < bs * dist.world:
        raise ValueError(f"the {task.train_split} split has {len(train_ds)} samples, fewer than one global batch "
                         f"({bs} x {dist.world} processes); lower train.batch_size")
    total_steps, warmup = _schedule(tc, len(train_ds) // (bs * dist.world))
    groups = param_groups(model, float(tc.weight_decay), float(tc.layer_decay), float(tc.head_lr_mult))
    # fused AdamW (one kernel for every parameter) on the GPU; the CPU keeps torch's default implementation
    optimizer = torch.optim.AdamW([{k: v for k, v in g.items() if k != "param_names"} for g in groups],
                                  lr=float(tc.lr), betas=tuple(tc.betas), eps=float(tc.eps),
                                  fused=True if device.type == "cuda" else None)
    if dist.main:
        check_free_space(ckpt_dir, _checkpoint_bytes(model), setting="train.output_dir")
    autocast, scaler = autocast_and_scaler(str(tc.amp), device)
    state = TrainState()
    if resume is not None:
        try:
            model.load_state_dict(resume["model"])
        except RuntimeError as exc:  # a run of another configuration (older checkpoints store no config)
            raise CheckpointMismatchError(
                f"{ckpt_dir / 'last.pt'} does not fit this model: train.output_dir holds another run. Use another "
                f"train.output_dir, or train.resume=false to start over there\n{str(exc)[:600]}") from exc
        optimizer.load_state_dict(resume["optimizer"])
        if scaler is not None and resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])
        state = TrainState.from_checkpoint(resume)
        set_rng_state(resume["rng"])
    train_model = model
    if dist.enabled:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
    log = MetricLog(out, dist.main, bool(tc.tensorboard), state.global_step if resume is not None else None)
    config = _plain(cfg)

    def checkpoint_extra(metrics: Optional[Dict[str, float]] = None) -> Dict[str, Any]:
        """The run config and the model's self-description (``pipeline(task, model="best.pt")`` needs nothing else)."""
        description = describe_task_model(
            task, task_name, model, name=f"{task_name}_{cfg.model.name}", base=cfg.model.get("checkpoint"),
            tokenizer_kind=str(cfg.model.get("tokenizer", "sentencepiece")), tokenizer_file=cfg.data.get("tokenizer"),
            benchmark=metrics)
        return {"config": config, MODEL_CONFIG_KEY: description.to_dict()}

    eval_metrics = fit(task=task, task_name=task_name, model=model, train_model=train_model, train_ds=train_ds,
                       optimizer=optimizer, scaler=scaler, autocast=autocast, tc=tc, dist=dist, device=device,
                       out=out, state=state, log=log, eval_split=eval_split, total_steps=total_steps, warmup=warmup,
                       num_workers=int(cfg.data.num_workers), checkpoint_extra=checkpoint_extra)
    log.close()
    if dist.main:
        if bool(tc.predict) and not eval_metrics:
            eval_metrics = evaluate(task, model, eval_split, device, out, task_name, predict=True)
        plot_curves(out / "metrics.csv", out / "curves.png")
        results.update(eval=eval_metrics, best={task.primary_metric: state.best}, steps=state.global_step,
                       nonfinite_loss_skips=state.nonfinite_skips, skipped=task.skips.as_dict(),
                       seconds=round(time.perf_counter() - t0, 1))
        _add_controls(tc, task, model, eval_split, device, results)
        dataset_skips = getattr(train_ds, "skips", None)
        if dataset_skips is not None:
            results["train_skipped"] = dataset_skips.as_dict()
        (out / "metrics.json").write_text(json.dumps(results, indent=1, default=str))
    dist.barrier()
    return results


def _add_controls(tc, task, model, eval_split: str, device, results: Dict[str, Any]) -> None:
    """``train.controls``: blind baseline, shuffled- and constant-image evaluations (``controls.py``)."""
    if bool(tc.get("controls", False)):
        from .controls import evaluate_controls

        results["controls"] = evaluate_controls(task, model, eval_split, device, seed=int(tc.seed))
        logger.info("controls on %s: %s", eval_split, {k: results["controls"][k] for k in ("metric", "margin")})


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
