"""Turn a fairseq ``beit3_pretrain`` checkpoint into the backbone checkpoint the other plugins load, and
measure held-out masked-token accuracy against chance.

The export is ``torch.save({"model": state_dict})`` in the released BEiT-3 key layout (``beit3.*`` plus
``mlm_head.*`` / ``mim_head.*``; decoupled backbones) or in our own layout (shared backbones such as
VLMo and the giant model, which have no released layout). Both load with
``beit3_plugins.backbones.build_backbone(name, checkpoint=path)``.
"""
import collections
import json
import logging
import os
from typing import Dict, Optional

import torch

from beit3_plugins.checkpoint import CheckpointMismatchError
from beit3_plugins.backbones import build_backbone  # noqa: F401 - documented loader of the export
from beit3_plugins.pretraining.masking import IGNORE_INDEX

logger = logging.getLogger(__name__)

__all__ = ["load_pretrain_checkpoint", "export_checkpoint", "heldout_accuracy", "cli_main"]


def load_pretrain_checkpoint(path: str, overrides: Optional[Dict] = None):
    """(model, task) from a fairseq checkpoint of this plugin (task data paths can be overridden)."""
    from fairseq import checkpoint_utils

    import beit3_plugins.pretraining.fairseq_plugin  # noqa: F401 - registers task/model

    if not os.path.isfile(path):
        raise FileNotFoundError(f"fairseq checkpoint not found: {path}")
    models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task([path], arg_overrides=overrides or {})
    model = models[0]
    if not hasattr(model, "core"):
        raise ValueError(f"{path} is not a beit3_pretrain checkpoint (model {type(model).__name__})")
    return model.eval(), task


def _core_from_state(path: str):
    """Rebuild the backbone + heads from the checkpoint alone (no data directory needed)."""
    from fairseq import checkpoint_utils

    from beit3_plugins.registry import BACKBONES

    from .models import BACKBONE_PREFIX

    try:
        state = checkpoint_utils.load_checkpoint_to_cpu(path)
    except KeyError as exc:  # fairseq's upgrade step reads fields only its own checkpoints have
        raise ValueError(_not_fairseq(path)) from exc
    cfg = state["cfg"]
    sd = state["model"]
    if not any(k.startswith(BACKBONE_PREFIX) for k in sd):
        raise ValueError(f"{path} is not a beit3_pretrain checkpoint (no {BACKBONE_PREFIX}* weights)")
    name = cfg["model"].get("backbone") or cfg["model"]["_name"]
    backbone_sd = {k[len(BACKBONE_PREFIX):]: v for k, v in sd.items() if k.startswith(BACKBONE_PREFIX)}
    sizes = {"img_size": int(cfg["task"]["image_size"]), "vocab_size": backbone_sd["text_embed.weight"].shape[0]}
    if "text_pos_embed" in backbone_sd:  # absolute positions (VLMo has a relative position bias only)
        sizes["max_text_positions"] = backbone_sd["text_pos_embed"].shape[1]
    backbone = BACKBONES.build(name, **sizes)
    backbone.load_state_dict(backbone_sd, strict=True)
    heads = {k[len("core."):]: v for k, v in sd.items()
             if k.startswith(("core.mlm_head.", "core.mim_head.", "core.vision_head.", "core.language_head.",
                              "core.logit_scale"))}
    if cfg["model"].get("mim_target", "vqkd") != "vqkd":   # pixel heads have no released counterpart
        heads = {k: v for k, v in heads.items() if not k.startswith("mim_head.")}
    spm = cfg["task"].get("spm_model") or None
    if spm and not os.path.isabs(spm):
        spm = os.path.join(cfg["task"].get("data") or "", spm)
    return name, backbone, heads, spm


def _not_fairseq(path: str) -> str:
    """What ``path`` is, for a file fairseq could not read as one of its checkpoints."""
    from beit3_plugins.checkpoint import safe_load

    state = safe_load(path)
    model = state.get("model") if isinstance(state, dict) else None
    what = "a state dict"
    if isinstance(model, dict) and isinstance(state.get("config"), dict) and any(k.startswith("backbone.") for k in model):
        config = state["config"]
        name = config.get("model", {}).get("name", "<backbone>")
        what = (f"a checkpoint of the VL task trainer (task {config.get('task', {}).get('name')}, model {name}), "
                f"whose backbone loads as it is: build_backbone({name!r}, checkpoint={path!r})")
    elif isinstance(model, dict) and any(k.startswith("beit3.") for k in model):
        what = "already a backbone checkpoint in the released BEiT-3 layout (build_backbone(name, checkpoint=...) loads it)"
    return (f"{path} is not a fairseq checkpoint of the beit3_pretrain task: it is {what}. export-pretrained "
            "converts the checkpoint_*.pt files fairseq-train writes")


def export_checkpoint(fairseq_checkpoint: str, out_path: str) -> Dict[str, object]:
    """Write the backbone checkpoint; returns a summary (backbone name, layout, #tensors)."""
    from beit3_plugins.backbones import export_state_dict

    from beit3_plugins.backbones import backbone_model_config

    name, backbone, heads, spm = _core_from_state(fairseq_checkpoint)
    sd, layout = export_state_dict(backbone, heads)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    # the backbone's self-description: build_backbone(name, pretrained=out_path) / beit3-plugins save need no more
    description = backbone_model_config(backbone, task="pretrain", trained_by="fairseq export",
                                        tokenizer_file=spm if spm and os.path.isfile(spm) else None,
                                        base=os.path.abspath(fairseq_checkpoint))
    torch.save({"model": sd, "model_config": description.to_dict()}, out_path)
    summary = {"backbone": name, "layout": layout, "tensors": len(sd), "heads": sorted(heads), "path": out_path}
    logger.info(f"exported {summary}")
    return summary


@torch.no_grad()
def heldout_accuracy(model, task, max_batches: int = 50, batch_units: int = 16) -> Dict[str, Dict[str, float]]:
    """Masked-token accuracy per objective on the task's ``valid`` split with fixed masks, next to chance:
    ``uniform`` = 1 / #classes and ``majority`` = frequency of the most common target (the accuracy of
    always answering the most frequent token / visual code)."""
    if "valid" not in task.datasets:
        task.load_dataset("valid")
    ds = task.datasets["valid"]
    core = model.core
    stats = collections.defaultdict(lambda: {"correct": 0, "count": 0, "targets": collections.Counter()})

    def add(kind: str, logits: torch.Tensor, targets: torch.Tensor) -> None:
        s = stats[kind]
        s["correct"] += int((logits.argmax(-1) == targets).sum())
        s["count"] += int(targets.numel())
        s["targets"].update(targets.tolist())
        s["classes"] = logits.shape[-1]

    indices = list(range(min(len(ds), max_batches * batch_units)))
    for start in range(0, len(indices), batch_units):
        batch = ds.collater([ds[i] for i in indices[start: start + batch_units]])["net_input"]
        if "text" in batch:
            t = batch["text"]
            out = core.backbone.forward_text(t["ids"], padding_mask=t["padding_mask"])
            keep = t["targets"] != IGNORE_INDEX
            add("text_mlm", core.mlm_head(out.hidden[keep]), t["targets"][keep])
        if "image" in batch and core.mim_target == "vqkd":
            im = batch["image"]
            codes = core.mim_targets(im["image"], core._grid(im["image"]))
            out = core.backbone.forward_vision(im["image"], masked_positions=im["mask"])
            add("image_mim", core.mim_head(out.hidden[:, 1:][im["mask"]]), codes[im["mask"]])
        if "pair" in batch and not core.vlmo_heads:
            p = batch["pair"]
            out = core.backbone.forward_fused(p["image"], p["ids"], padding_mask=p["padding_mask"],
                                              masked_positions=p["mask"])
            keep = p["targets"] != IGNORE_INDEX
            add("pair_text", core.mlm_head(out.text_tokens[keep]), p["targets"][keep])
            if core.mim_target == "vqkd" and bool(p["mask"].any()):
                codes = core.mim_targets(p["image"], core._grid(p["image"]))
                add("pair_image", core.mim_head(out.vision_tokens[:, 1:][p["mask"]]), codes[p["mask"]])
    result = {}
    for kind, s in stats.items():
        if not s["count"]:
            continue
        result[kind] = {"accuracy": s["correct"] / s["count"], "count": s["count"],
                        "chance_uniform": 1.0 / s["classes"],
                        "chance_majority": s["targets"].most_common(1)[0][1] / s["count"]}
    return result


def cli_main(argv=None) -> int:
    """Export a fairseq pretraining checkpoint as a backbone checkpoint (released BEiT-3 layout).

    ``beit3-plugins export-pretrained CHECKPOINT OUT [--eval-data DIR --spm-model SPM --metrics OUT.json]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="beit3-plugins export-pretrained", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="fairseq checkpoint (e.g. checkpoints/checkpoint_last.pt)")
    parser.add_argument("out", help="backbone checkpoint to write (e.g. backbone.pth)")
    parser.add_argument("--eval-data", help="data directory: also measure held-out masked-token accuracy")
    parser.add_argument("--spm-model", help="sentencepiece model (with --eval-data)")
    parser.add_argument("--metrics", help="write the accuracies as json here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s | %(name)s | %(message)s")
    try:
        summary = export_checkpoint(args.checkpoint, args.out)
    except (FileNotFoundError, ValueError, KeyError, CheckpointMismatchError) as exc:
        parser.error(str(exc))
    print(json.dumps(summary))
    if args.eval_data:
        overrides = {"data": args.eval_data}
        if args.spm_model:
            overrides["spm_model"] = args.spm_model
        model, task = load_pretrain_checkpoint(args.checkpoint, overrides)
        acc = heldout_accuracy(model, task)
        print(json.dumps(acc, indent=1))
        if args.metrics:
            with open(args.metrics, "w") as handle:
                json.dump({"export": summary, "heldout": acc}, handle, indent=1)
    return 0
