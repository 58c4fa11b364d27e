"""Checkpoint I/O shared by every plugin: safe loading and a readable report of what was used.

Files are always read with ``torch.load(weights_only=True)`` (or, for ``.safetensors``, with safetensors,
which has no pickle): a checkpoint can never run code on load.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle
import re
import sys
import zipfile
from typing import Dict, List, Optional

import torch
from torch import Tensor, nn

from .io_checks import atomic_write  # noqa: F401 - re-exported: the trainers' checkpoint writes use it

logger = logging.getLogger(__name__)

__all__ = ["CheckpointMismatchError", "UnsafeCheckpointError", "CorruptCheckpointError", "LoadReport", "safe_load", "load_state_dict_file",
           "load_with_report", "unsafe_checkpoint_error", "checkpoint_read_error", "refuse_forced_unsafe_loading", "FORCE_UNSAFE_ENV",
           "atomic_write", "shape_list", "save_safetensors", "is_safetensors", "convert_to_safetensors", "convert_cli"]

SAFETENSORS_SUFFIX = ".safetensors"


def is_safetensors(path) -> bool:
    return str(path).endswith(SAFETENSORS_SUFFIX)


# Containers that checkpoints of the frameworks we meet wrap their weights in.
_WRAPPER_KEYS = ("model", "state_dict", "module", "model_state")


class CheckpointMismatchError(RuntimeError):
    """A checkpoint does not fit the model: missing keys (strict) or tensors of the wrong shape."""


class UnsafeCheckpointError(CheckpointMismatchError):
    """A file that ``torch.load(weights_only=True)`` refuses: it pickles code or arbitrary objects."""


class CorruptCheckpointError(CheckpointMismatchError):
    """A file that is not a whole checkpoint: empty, truncated, damaged, or not a PyTorch file at all."""


def safe_load(path, map_location="cpu", name: Optional[str] = None, mmap: bool = False):
    """``torch.load(path, weights_only=True)`` with an error that says why a file is refused and how to fix it.

    The one place this package unpickles a file a user supplies; weights-only loading is never turned off,
    so a crafted checkpoint cannot run code when it is read. ``path`` may be a file object; ``name`` (e.g. the
    URL it came from) then names it in errors. ``mmap``: map the tensors instead of reading them (a cheap look
    at a big file's other entries, e.g. its ``model_config``).
    """
    if isinstance(path, (str, os.PathLike)) and not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if isinstance(path, (str, os.PathLike)) and is_safetensors(path):
        return _load_safetensors(path, map_location)
    try:
        return torch.load(path, map_location=map_location, weights_only=True, **({"mmap": True} if mmap else {}))
    except Exception as exc:  # noqa: BLE001 - turn pickle errors into an actionable message
        raise checkpoint_read_error(name or path, exc) from exc


def _load_safetensors(path, map_location) -> Dict[str, Tensor]:
    """A ``.safetensors`` file: tensors and a JSON header only, no pickle at all (Hugging Face's format)."""
    try:
        from safetensors.torch import load_file
    except ImportError as exc:
        raise ImportError(f"{path}: reading .safetensors files needs the safetensors package "
                          "(pip install safetensors)") from exc
    device = map_location if isinstance(map_location, str) else "cpu"
    try:
        return load_file(str(path), device=device)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for damaged files
        raise CheckpointMismatchError(f"{path}: not a valid .safetensors file ({type(exc).__name__}: {exc})"
                                      ) from exc


def unsafe_checkpoint_error(path, exc: BaseException) -> UnsafeCheckpointError:
    """The error for a file a weights-only load refused: why, and how to re-save it safely."""
    return UnsafeCheckpointError(
        f"cannot read {path} as a weights-only checkpoint ({type(exc).__name__}: {exc}). Files that pickle "
        "code or arbitrary objects are refused, because loading them could run that code. If you trust the "
        "file, re-save its tensors alone: torch.save({'model': model.state_dict()}, 'safe.pth').")


_ZIP_MAGIC, _PICKLE_MAGIC = b"PK\x03\x04", b"\x80"
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+) was not an allowed global")


def _damage(path, exc: BaseException) -> Optional[str]:
    """Why ``path`` is not a whole checkpoint, or None when the failure is a weights-only refusal.

    torch reports both through the same exception types, so the file is looked at: torch.save writes a zip
    archive (older files: a pickle stream); a zip whose central directory is gone was cut short, a pickle
    that ends early or names a class that does not exist in an already imported module was cut short too."""
    head = b""
    if isinstance(path, (str, os.PathLike)) and os.path.isfile(path):
        if os.path.getsize(path) == 0:
            return "the file is empty"
        with open(path, "rb") as handle:
            head = handle.read(8)
    if isinstance(exc, EOFError):
        return "the file ends early (truncated)"
    if head.startswith(_ZIP_MAGIC) or (not head and "zip archive" in str(exc)):
        if head and not zipfile.is_zipfile(path):
            return "the zip archive torch.save writes is incomplete (truncated or damaged)"
        if isinstance(exc, pickle.UnpicklingError):
            return None
        return f"a damaged archive or not one torch.save wrote ({str(exc).splitlines()[0][:160]})"
    if head and not head.startswith(_PICKLE_MAGIC):
        return f"not a PyTorch checkpoint (a torch.save file is a zip archive; this one starts with {head[:8]!r})"
    refused = _REFUSED_GLOBAL.search(str(exc))
    if refused:
        module, _, attr = refused.group(1).rpartition(".")
        if module in sys.modules and not hasattr(sys.modules[module], attr):
            return f"the pickle stream is cut off or damaged (it names {refused.group(1)}, which does not exist)"
    return None


def checkpoint_read_error(path, exc: BaseException) -> CheckpointMismatchError:
    """The error for a file ``torch.load(weights_only=True)`` could not read: corrupt, or refused as unsafe."""
    damage = _damage(path, exc)
    if damage is None:
        return unsafe_checkpoint_error(path, exc)
    return CorruptCheckpointError(f"{path} is not a readable checkpoint: {damage}. Download or copy it again, or "
                                  "point to another file.")


FORCE_UNSAFE_ENV = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


def refuse_forced_unsafe_loading(who: str) -> None:
    """Fail if ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is set: it turns every ``torch.load`` that does not pass
    ``weights_only`` (fairseq's, mmengine's and fvcore's own loaders) into a full unpickler that runs code."""
    if os.environ.get(FORCE_UNSAFE_ENV, "0").lower() in ("1", "y", "yes", "true"):
        raise UnsafeCheckpointError(
            f"{who}: refusing to run with {FORCE_UNSAFE_ENV} set: it makes torch.load unpickle anything, so a "
            f"checkpoint could run code. Unset it (`unset {FORCE_UNSAFE_ENV}`); checkpoints that then fail to load "
            "should be re-saved as tensors: torch.save({'model': model.state_dict()}, 'safe.pth').")


def save_safetensors(state_dict: Dict[str, Tensor], path, metadata: Optional[Dict[str, str]] = None) -> str:
    """Write a flat name -> tensor dict as ``.safetensors`` (tensors made contiguous and unshared, as the
    format requires). ``metadata`` is a str -> str dict stored in the header."""
    from safetensors.torch import save_file

    if not is_safetensors(path):
        raise ValueError(f"a safetensors file name must end in {SAFETENSORS_SUFFIX}: {path}")
    not_tensors = sorted(k for k, v in state_dict.items() if not isinstance(v, Tensor))
    if not_tensors:
        raise TypeError(f"safetensors holds tensors only; these entries are not: {not_tensors[:10]}")
    tensors = {k: v.detach().contiguous().clone() for k, v in state_dict.items()}
    save_file(tensors, str(path), metadata=dict(metadata or {}))
    return str(path)


@dataclasses.dataclass
class LoadReport:
    """What a checkpoint gave a model: the one report type of every loader in this package.

    ``loaded`` / ``missing`` / ``unexpected`` are model keys; ``pruned`` are checkpoint tensors of parts the
    model removed on purpose (e.g. the language experts of a vision-only detector); ``heads`` are the task
    head tensors kept aside for whoever owns those heads.
    """

    source: str
    loaded: List[str]
    missing: List[str]
    unexpected: List[str]
    notes: List[str] = dataclasses.field(default_factory=list)
    heads: Dict[str, Tensor] = dataclasses.field(default_factory=dict)
    pruned: List[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{self.source}: loaded {len(self.loaded)} tensors"]
        for title, keys in (("missing", self.missing), ("unexpected", self.unexpected),
                            ("not used (pruned from the model)", self.pruned)):
            if keys:
                lines.append(f"  {title} ({len(keys)}): {', '.join(keys[:20])}" + (" ..." if len(keys) > 20 else ""))
        if self.heads:
            lines.append(f"  task heads kept aside: {', '.join(sorted(self.heads))}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_json(self) -> Dict:
        """Names only (head tensors by name), for a report file next to a training run."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["heads"] = sorted(self.heads)
        return out

    def write(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(self.to_json(), f, indent=1)


def load_state_dict_file(path: str, map_location: str = "cpu") -> Dict[str, Tensor]:
    """Read a checkpoint file safely and unwrap the usual containers (``model``, ``state_dict``, ...)."""
    state = safe_load(path, map_location)
    for key in _WRAPPER_KEYS:
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise CheckpointMismatchError(f"{path} holds a {type(state).__name__}, not a state dict")
    return state


def shape_list(lines: List[str], show: int = 8) -> str:
    """`` (N):`` and the first ``show`` lines of a wrong-shape list, then how many more: a size mismatch
    touches every layer, and hundreds of lines bury the cause."""
    more = f"\n  ... and {len(lines) - show} more" if len(lines) > show else ""
    return f" ({len(lines)}):\n  " + "\n  ".join(lines[:show]) + more


def load_with_report(model: nn.Module, state_dict: Dict[str, Tensor], strict: bool = True,
                     source: str = "<state dict>", notes: Optional[List[str]] = None) -> LoadReport:
    """Load ``state_dict`` into ``model``; shape mismatches always raise, missing or unexpected keys raise if
    strict (callers put task heads and deliberately unused tensors aside first, see ``LoadReport``)."""
    own = model.state_dict()
    wrong_shape = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                   for k, v in state_dict.items() if k in own and own[k].shape != v.shape]
    if wrong_shape:
        raise CheckpointMismatchError(f"{source}: tensors of the wrong shape{shape_list(wrong_shape)}")
    result = model.load_state_dict(state_dict, strict=False)
    report = LoadReport(source=source, loaded=sorted(k for k in state_dict if k in own),
                        missing=sorted(result.missing_keys), unexpected=sorted(result.unexpected_keys),
                        notes=list(notes or []))
    if strict and (report.missing or report.unexpected):
        what = " and ".join(w for w, keys in (("missing", report.missing), ("unexpected", report.unexpected)) if keys)
        raise CheckpointMismatchError(f"{source}: {what} keys for {type(model).__name__}:\n{report.summary()}")
    logger.info(report.summary())
    return report


def convert_to_safetensors(src, dst) -> Dict[str, int]:
    """Re-save a checkpoint's weights (read through :func:`load_state_dict_file`, so safely) as safetensors.

    Non-tensor entries (an argparse namespace, an epoch counter) cannot be stored and are counted, never
    silently lost: the returned dict has ``tensors`` and ``skipped`` counts; the skipped names go in the
    file's metadata. Keys and values are unchanged, so the file loads wherever the ``.pth`` did.
    """
    import json

    state = load_state_dict_file(str(src))
    tensors = {k: v for k, v in state.items() if isinstance(v, Tensor)}
    skipped = sorted(k for k in state if k not in tensors)
    if not tensors:
        raise CheckpointMismatchError(f"{src} holds no tensors to convert")
    save_safetensors(tensors, dst, metadata={"format": "pt", "source": os.path.basename(str(src)),
                                             "skipped_non_tensors": json.dumps(skipped)})
    return {"tensors": len(tensors), "skipped": len(skipped)}


def convert_cli(argv=None) -> int:
    """``beit3-plugins convert-safetensors IN.pth OUT.safetensors``."""
    import argparse

    parser = argparse.ArgumentParser(prog="beit3-plugins convert-safetensors",
                                     description="re-save a (released) .pth checkpoint as .safetensors")
    parser.add_argument("src", help="input checkpoint (.pth; read with weights_only=True)")
    parser.add_argument("dst", help="output file (.safetensors)")
    args = parser.parse_args(argv)
    counts = convert_to_safetensors(args.src, args.dst)
    print(f"{args.dst}: {counts['tensors']} tensors" + (f", {counts['skipped']} non-tensor entries not stored"
                                                        if counts["skipped"] else ""))
    return 0
