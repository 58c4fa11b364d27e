"""Train / evaluate BEiT-3 ViTDet + Cascade Mask R-CNN with detectron2 (detectron2's ``tools/train_net.py``
for this adapter, inside the package so that an installed wheel trains):

    python -m beit3_plugins.detection.train --config-file detection/cascade_beit3.yaml [--num-gpus N] \
        [--resume] [--eval-only MODEL.WEIGHTS out/model_final.pth] [KEY VALUE ...]
    python -m beit3_plugins.detection.train --config-file detection/configs/cascade_beit3_tiny.py \
        [--eval-only] [key=value ...]                     # LazyConfig (ViTDet-style .py configs)

``python -m beit3_plugins.detection.train ...`` in a checkout is the same command.

``--tta`` adds detectron2's multi-scale + flip test-time augmentation to every evaluation (yacs ``TEST.AUG.*``,
LazyConfig ``test_aug``; the paper's multi-scale COCO numbers); its results are keyed ``bbox_TTA`` / ``segm_TTA``.

detectron2's usual flags and ``launch``. Config paths that start with ``detection/`` are also found when the
command runs outside the repository (the package is installed as ``beit3_plugins.detection``). Evaluation
results are written to ``<output dir>/eval_results.json``; ``--visualize N`` draws N test images with their
predictions into ``<output dir>/visualization/``.
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import torch

from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.engine import (AMPTrainer, SimpleTrainer, default_argument_parser, default_setup, default_writers,
                               hooks, launch)
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from beit3_plugins import detection as det
from beit3_plugins.input_checks import exit_on_missing_data
from beit3_plugins.io_checks import prepare_output_dir
from beit3_plugins.runtime import tune_malloc_unless_disabled

logger = logging.getLogger("beit3_plugins.detection.train")  # under setup_logger("beit3_plugins") also as __main__


def resolve_config_path(path: str) -> str:
    """``detection/...`` paths resolve inside the installed package when not found from the cwd."""
    if os.path.isfile(path):
        return path
    parts = Path(path).parts
    if parts and parts[0] == "detection":
        candidate = Path(det.__file__).parent.joinpath(*parts[1:])
        if candidate.is_file():
            return str(candidate)
    raise FileNotFoundError(f"config file not found: {path}")


def _write_results(output_dir: str, results) -> None:
    if not comm.is_main_process() or not results:
        return
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "eval_results.json"), "w") as f:
        json.dump(_plain(results), f, indent=1, sort_keys=True)


def _plain(obj):
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


# ---------------------------------------------------------------------------------------------- yacs path
def setup_yacs(args):
    cfg = get_cfg()
    det.add_beit3_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if args.tta:
        cfg.TEST.AUG.ENABLED = True
    if not torch.cuda.is_available():
        if cfg.MODEL.DEVICE.startswith("cuda"):
            logger.warning("no CUDA device: MODEL.DEVICE cpu")
            cfg.MODEL.DEVICE = "cpu"
        if cfg.SOLVER.AMP.ENABLED:
            logger.warning("SOLVER.AMP.ENABLED needs CUDA; training in fp32 on CPU")
            cfg.SOLVER.AMP.ENABLED = False
    if args.eval_only:
        if not cfg.MODEL.WEIGHTS and not args.resume:
            raise ValueError("--eval-only needs the detector weights: add MODEL.WEIGHTS path/to/model_final.pth")
        cfg.MODEL.BEIT3.WEIGHTS = ""  # the detector checkpoint replaces every backbone tensor anyway
    cfg.freeze()
    if comm.is_main_process():  # an unwritable OUTPUT_DIR stops here, naming it, not at the first checkpoint
        prepare_output_dir(cfg.OUTPUT_DIR, setting="OUTPUT_DIR")
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="beit3_plugins")  # our messages in log.txt
    det.register_coco_datasets(cfg.DATASETS.COCO_INSTANCES, det.data.dataset_root(cfg))
    return cfg


def _visualize_yacs(cfg, model, args) -> None:
    if args.visualize > 0 and comm.is_main_process() and cfg.DATASETS.TEST:
        paths = det.visualize_predictions(cfg, model, cfg.DATASETS.TEST[0],
                                          os.path.join(cfg.OUTPUT_DIR, "visualization"), args.visualize,
                                          args.vis_score_threshold)
        logger.info("wrote %d visualisations to %s", len(paths), os.path.dirname(paths[0]) if paths else "-")


def main_yacs(args):
    cfg = setup_yacs(args)
    Trainer = det.Beit3DetectionTrainer
    if args.eval_only:
        model = Trainer.build_model(cfg)
        det.SafeDetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS,
                                                                                     resume=args.resume)
        results = Trainer.test(cfg, model)
        if cfg.TEST.AUG.ENABLED:
            results.update(Trainer.test_with_TTA(cfg, model))
        _write_results(cfg.OUTPUT_DIR, results)
        _visualize_yacs(cfg, model, args)
        return results
    trainer = Trainer(cfg)
    net = trainer.model.module.backbone.net if hasattr(trainer.model, "module") else trainer.model.backbone.net
    if net.init_report is not None and comm.is_main_process():
        net.init_report.write(os.path.join(cfg.OUTPUT_DIR, "backbone_init_report.json"))
    trainer.resume_or_load(resume=args.resume)
    trainer.train()
    results = getattr(trainer, "_last_eval_results", None)
    if cfg.TEST.AUG.ENABLED:
        results = {**(results or {}), **Trainer.test_with_TTA(cfg, getattr(trainer.model, "module", trainer.model))}
    _write_results(cfg.OUTPUT_DIR, results)
    _visualize_yacs(cfg, getattr(trainer.model, "module", trainer.model), args)
    return results


# ---------------------------------------------------------------------------------------------- LazyConfig path
def setup_lazy(args):
    cfg = LazyConfig.load(args.config_file)
    cfg = LazyConfig.apply_overrides(cfg, args.opts)
    if args.tta:
        if "test_aug" not in cfg:
            raise ValueError(f"{args.config_file} has no test_aug dict (min_sizes, max_size, flip) for --tta")
        cfg.test_aug.enabled = True
    if cfg.train.amp.enabled and not torch.cuda.is_available():
        logger.warning("train.amp.enabled needs CUDA; training in fp32 on CPU")
        cfg.train.amp.enabled = False
    if comm.is_main_process():
        prepare_output_dir(cfg.train.output_dir, setting="train.output_dir")
    default_setup(cfg, args)
    setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="beit3_plugins")
    datasets = cfg.get("datasets", {})
    det.register_coco_datasets(datasets.get("coco_instances", []),
                               datasets.get("root", "") or os.environ.get("DETECTRON2_DATASETS", "datasets"))
    return cfg


def do_test_lazy(cfg, model):
    if "evaluator" not in cfg.dataloader:
        return {}
    results = inference_on_dataset(model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator))
    print_csv_format(results)
    test_aug = cfg.get("test_aug", None)
    if test_aug is not None and test_aug.get("enabled", False):
        from detectron2.modeling import GeneralizedRCNNWithTTA

        from beit3_plugins.detection.tta import lazy_tta_cfg

        net = getattr(model, "module", model)
        logger.info("Running inference with test-time augmentation: %s", dict(test_aug))
        tta = GeneralizedRCNNWithTTA(lazy_tta_cfg(net, test_aug, cfg.model.backbone.get("square_pad", 0)), net)
        tta_results = inference_on_dataset(tta, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator))
        print_csv_format(tta_results)
        results = {**results, **{f"{k}_TTA": v for k, v in tta_results.items()}}
    return results


def main_lazy(args):
    cfg = setup_lazy(args)
    model = instantiate(cfg.model).to(cfg.train.device)
    if args.eval_only:
        if not cfg.train.init_checkpoint:
            raise ValueError("--eval-only needs the detector weights: add train.init_checkpoint=path/to/model.pth")
        det.SafeDetectionCheckpointer(model).load(cfg.train.init_checkpoint)
        results = do_test_lazy(cfg, model)
        _write_results(cfg.train.output_dir, results)
        return results
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    from detectron2.engine.defaults import create_ddp_model

    model = create_ddp_model(model, **cfg.train.ddp)
    trainer_cls = AMPTrainer if cfg.train.amp.enabled else SimpleTrainer
    trainer = trainer_cls(model, None, optimizer)
    checkpointer = det.SafeDetectionCheckpointer(model, cfg.train.output_dir, trainer=trainer,
                                                 replace_heads=cfg.train.get("replace_heads", []))
    results_box = {}

    def test_and_keep():
        results_box["results"] = do_test_lazy(cfg, model)
        return results_box["results"]

    seed = cfg.train.get("seed", 42)
    trainer.register_hooks([
        det.SeedPerIteration(seed),
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if comm.is_main_process() else None,
        hooks.EvalHook(cfg.train.eval_period, test_and_keep),
        hooks.PeriodicWriter(default_writers(cfg.train.output_dir, cfg.train.max_iter),
                             period=cfg.train.log_period) if comm.is_main_process() else None,
    ])
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
    cfg.dataloader.train.start_iter = start_iter  # the stream continues where the checkpointed run was
    trainer.data_loader = instantiate(cfg.dataloader.train)
    trainer.train(start_iter, cfg.train.max_iter)
    _write_results(cfg.train.output_dir, results_box.get("results"))
    return results_box.get("results")


def check_data(args) -> None:
    """Before anything is built (and before ``launch`` starts workers): every dataset the run reads is on
    disk, else one :class:`~beit3_plugins.input_checks.MissingDataError` naming each missing path."""
    config_file = resolve_config_path(args.config_file)
    if config_file.endswith(".py"):
        cfg = LazyConfig.apply_overrides(LazyConfig.load(config_file), args.opts)
        loaders = ([] if args.eval_only else [cfg.dataloader.train.get("dicts") or cfg.dataloader.train.dataset])
        loaders += [cfg.dataloader.test.dataset] if "test" in cfg.dataloader else []
        names = [n for d in loaders for n in ([d.names] if isinstance(d.names, str) else list(d.names))]
        datasets = cfg.get("datasets", {})
        root = datasets.get("root", "") or os.environ.get("DETECTRON2_DATASETS", "datasets")
        det.check_dataset_files(names, datasets.get("coco_instances", []), root, root_key="datasets.root")
        return
    cfg = get_cfg()
    det.add_beit3_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(args.opts)
    names = ([] if args.eval_only else list(cfg.DATASETS.TRAIN)) + list(cfg.DATASETS.TEST)
    det.check_dataset_files(names, cfg.DATASETS.COCO_INSTANCES, det.data.dataset_root(cfg))


def main(args):
    args.config_file = resolve_config_path(args.config_file)
    if args.config_file.endswith(".py"):
        return main_lazy(args)
    return main_yacs(args)


def build_parser():
    parser = default_argument_parser(epilog=__doc__)
    parser.add_argument("--visualize", type=int, default=0, metavar="N",
                        help="after training / evaluation, draw N test images with predictions to PNG")
    parser.add_argument("--vis-score-threshold", type=float, default=0.5)
    parser.add_argument("--tta", action="store_true",
                        help="also evaluate with multi-scale + flip test-time augmentation (TEST.AUG / test_aug)")
    return parser


def cli(argv=None):
    tune_malloc_unless_disabled()  # reuse freed memory instead of faulting in fresh pages (runtime.py)
    args = build_parser().parse_args(argv)
    print("Command Line Args:", args)
    with exit_on_missing_data():  # one message and exit status 2, no traceback (BEIT3_DEBUG=1 shows it)
        check_data(args)
    return launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
                  dist_url=args.dist_url, args=(args,))


if __name__ == "__main__":
    cli()
