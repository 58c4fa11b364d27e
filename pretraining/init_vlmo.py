"""``beit3-plugins init-vlmo-from-beit IN OUT``: the VLMo stage-1 checkpoint from a BEiT image model.

VLMo's stagewise pretraining starts from BEiT (VLMo paper, Sec. 3.3 and 4.6): its self-attention and FFN
initialise the Multiway Transformer, the FFN becoming the vision expert (copied into the language and
vision-language experts with ``--experts all``, the paper's image-only initialisation). The output is this
project's backbone layout under ``"model"``; stage 2 (``configs/pretrain/vlmo_base_stage2_language.yaml``)
reads it through ``model.init_from``. The key mapping lives in ``backbones/conversion.py``
(:func:`~beit3_plugins.backbones.conversion.vlmo_state_dict_from_beit`).
"""
from __future__ import annotations

import argparse
import logging
from typing import Dict, Optional, Sequence

import torch

__all__ = ["init_vlmo_from_beit", "cli_main"]

logger = logging.getLogger(__name__)


def init_vlmo_from_beit(beit_checkpoint: str, output: str, arch: str = "vlmo_base", experts: str = "all",
                        **overrides) -> Dict[str, object]:
    """Convert ``beit_checkpoint`` (read weights-only) into a ``arch`` backbone saved at ``output``; returns a
    summary (arch, experts, parameter count, notes)."""
    from beit3_plugins.backbones.conversion import vlmo_state_dict_from_beit
    from beit3_plugins.checkpoint import load_state_dict_file, load_with_report
    from beit3_plugins.registry import BACKBONES

    model = BACKBONES.build(arch, **overrides)
    state = load_state_dict_file(beit_checkpoint)
    try:
        converted, notes = vlmo_state_dict_from_beit(state, model, experts=experts)
    except (ValueError, NotImplementedError) as exc:
        raise type(exc)(f"{beit_checkpoint}: {exc}") from exc
    load_with_report(model, converted, strict=True, source=beit_checkpoint, notes=notes)
    torch.save({"model": model.state_dict(), "args": {"arch": arch, "experts": experts, "source": beit_checkpoint}},
               output)
    return {"arch": arch, "experts": experts, "parameters": sum(p.numel() for p in model.parameters()),
            "notes": notes}


def cli_main(argv: Optional[Sequence[str]] = None) -> int:
    """Initialise a VLMo checkpoint from a BEiT / BEiT v2 image checkpoint (VLMo's stagewise pretraining)."""
    parser = argparse.ArgumentParser(prog="beit3-plugins init-vlmo-from-beit", description=__doc__.split("\n\n")[0])
    parser.add_argument("beit_checkpoint", help="BEiT / BEiT v2 image checkpoint (timm-like keys blocks.N.*)")
    parser.add_argument("output", help="where to write the VLMo backbone (stage-1 checkpoint)")
    parser.add_argument("--arch", default="vlmo_base", help="registered VLMo backbone (vlmo_base, vlmo_large, ...)")
    parser.add_argument("--experts", default="all", choices=("all", "vision"),
                        help="all: BEiT's FFN initialises every expert (paper); vision: only the vision expert "
                             "(official convert_to_textpt_ckpt), the others keep their initial values")
    parser.add_argument("--vocab-size", type=int, default=0, help="text embedding rows (0: the arch's default)")
    parser.add_argument("--img-size", type=int, default=0, help="image size (0: the arch's default)")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in {"vocab_size": args.vocab_size, "img_size": args.img_size}.items() if v}
    from beit3_plugins.checkpoint import CheckpointMismatchError

    try:
        summary = init_vlmo_from_beit(args.beit_checkpoint, args.output, args.arch, args.experts, **overrides)
    except (FileNotFoundError, ValueError, KeyError, NotImplementedError, CheckpointMismatchError) as exc:
        parser.error(str(exc))  # exit 2 with the message (UnsafeCheckpointError is a CheckpointMismatchError)
    for note in summary["notes"]:
        print(f"note: {note}")
    print(f"wrote {args.output}: {summary['arch']} ({summary['parameters'] / 1e6:.2f}M parameters), "
          f"experts initialised: {summary['experts']}")
    return 0
