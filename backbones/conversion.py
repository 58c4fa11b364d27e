"""Checkpoint conversion for every Multiway variant: one dispatcher per source format, one loader.

Source formats (the layouts are facts of the public code; see ``docs/backbones.md``):

* ``beit3``: the released BEiT-3 files (microsoft/unilm ``beit3/`` on torchscale): keys ``beit3.*`` with
  ``A`` (vision) / ``B`` (language) branches and separate q/k/v projections;
* ``vlmo``: the released VLMo files (microsoft/unilm ``vlmo/``): ``transformer.blocks.N.*`` with shared
  attention, ``q_bias``/``v_bias``, ``norm2_{text,imag,vl}`` / ``mlp_{text,imag,vl}`` experts, ``gamma_1``/
  ``gamma_2`` layer scales, one ``relative_position_bias_table``, BERT text embeddings and a modality-type
  table;
* ``ours``: this package's own state dicts, bare or inside a whole-model checkpoint (a task model, detector,
  segmentor or fairseq model). Each adapter exports the prefix its model keeps the backbone under
  (``BACKBONE_PREFIX``) and passes it to the loader; this module names no adapter. A checkpoint whose backbone
  sits elsewhere (another adapter's, or one saved before an attribute was renamed) is found by its keys and
  the report names the prefix it was read from, so a rename never turns into a missing-keys report.

Structure after timm's ``vision_transformer.checkpoint_filter_fn``: :func:`convert_checkpoint` recognises
the format, hands it to that format's ``_convert_*`` function, then fits what depends on the model's size
(vision position table, relative position table, patch embedding, text positions) to the model.
:func:`checkpoint_filter_fn` keeps timm's contract (state dict in, state dict out);
:func:`load_pretrained` is the one loader every adapter calls and returns the one
:class:`~beit3_plugins.checkpoint.LoadReport`.

VLMo folds, exactly (they are constants per modality): BERT's token-type vector 0 into the word embeddings,
and VLMo's modality-type vectors into the text embedding norm's bias (text) and the patch projection bias
and [CLS] token (image). k has no bias in VLMo; the fused q/k/v bias gets zeros there (a key bias shifts
every score of a query equally, so softmax ignores it).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from beit3_plugins.checkpoint import CheckpointMismatchError, LoadReport, load_state_dict_file, load_with_report

from .multiway import POSITION_OFFSET, Layout, MultiwayTransformer
from .relative_position import fit_table_to_model, resize_table_to_grid

__all__ = [
    "ConvertedCheckpoint", "SOURCE_FORMATS", "detect_source_format", "convert_checkpoint", "checkpoint_filter_fn",
    "find_backbone_prefix",
    "load_pretrained", "to_released_state_dict", "export_state_dict", "split_heads", "HEAD_KEYS",
    "VLMO_HEAD_PREFIXES", "vlmo_state_dict_from_beit", "BEIT_INIT_EXPERTS", "checkpoint_size", "size_hint",
]


@dataclasses.dataclass
class ConvertedCheckpoint:
    """A checkpoint in this model's key layout: backbone tensors, task heads kept aside, what was done."""

    state_dict: Dict[str, Tensor]
    heads: Dict[str, Tensor]
    notes: List[str]
    source_format: str


# ---------------------------------------------------------------------------------------------- key tables
# Keys of the released BEiT-3 files that are task heads, not backbone (kept aside for the task plugins).
HEAD_KEYS = ("mlm_head.", "mim_head.", "vision_head.", "language_head.", "itm_head.", "logit_scale", "head.", "pooler.",
             "fc_norm.")
# Task heads of the released VLMo checkpoints.
VLMO_HEAD_PREFIXES = ("pooler.", "mlm_score.", "itm_score.", "itc_", "logit_scale", "logit_vl_scale",
                      "vqa_classifier.", "nlvr2_classifier.")

_BEIT3_EXPERT = {"A": "vision", "B": "text", "C": "vl"}
_BEIT3_EXPERT_BACK = {ours: released for released, ours in _BEIT3_EXPERT.items()}
_VLMO_EXPERT = {"imag": "vision", "text": "text", "vl": "vl"}

# One table per format, for both directions where there are two: (our key, source key). Placeholders: {i}
# layer index, {e} expert, {fc} fc1/fc2, {p} weight/bias. Tensors that are not 1:1 renames (q/k/v, position
# tables, folded type vectors) are handled beside the tables.
_BEIT3_KEY_TABLE = [
    ("text_embed.weight", "text_embed.weight"),
    ("mask_token", "vision_embed.mask_token"),
    ("cls_token", "vision_embed.cls_token"),
    ("patch_embed.{p}", "vision_embed.proj.{p}"),
    ("layers.{i}.attn.proj.{e}.{p}", "encoder.layers.{i}.self_attn.out_proj.{e}.{p}"),
    ("layers.{i}.attn.inner_norm.{e}.{p}", "encoder.layers.{i}.self_attn.inner_attn_ln.{e}.{p}"),
    ("layers.{i}.norm1.{e}.{p}", "encoder.layers.{i}.self_attn_layer_norm.{e}.{p}"),
    ("layers.{i}.ffn.{e}.{fc}.{p}", "encoder.layers.{i}.ffn.{e}.{fc}.{p}"),
    ("layers.{i}.ffn.{e}.norm.{p}", "encoder.layers.{i}.ffn.{e}.ffn_layernorm.{p}"),
    ("layers.{i}.norm2.{e}.{p}", "encoder.layers.{i}.final_layer_norm.{e}.{p}"),
    ("norm.{e}.{p}", "encoder.layer_norm.{e}.{p}"),
]
_VLMO_KEY_TABLE = [
    ("text_embed.weight", "text_embeddings.word_embeddings.weight"),
    ("text_embed_norm.{p}", "text_embeddings.LayerNorm.{p}"),
    ("patch_embed.{p}", "transformer.patch_embed.proj.{p}"),
    ("cls_token", "transformer.cls_token"),
    ("layers.{i}.norm1.shared.{p}", "transformer.blocks.{i}.norm1.{p}"),
    ("layers.{i}.attn.qkv.shared.weight", "transformer.blocks.{i}.attn.qkv.weight"),
    ("layers.{i}.attn.proj.shared.{p}", "transformer.blocks.{i}.attn.proj.{p}"),
    ("layers.{i}.gamma_attn", "transformer.blocks.{i}.gamma_1"),
    ("layers.{i}.gamma_ffn", "transformer.blocks.{i}.gamma_2"),
    ("layers.{i}.norm2.{e}.{p}", "transformer.blocks.{i}.norm2_{e}.{p}"),
    ("layers.{i}.ffn.{e}.{fc}.{p}", "transformer.blocks.{i}.mlp_{e}.{fc}.{p}"),
    ("norm.shared.{p}", "transformer.norm.{p}"),
    ("rel_pos.table", "relative_position_bias_table"),
]
_PLACEHOLDER = {"i": r"\d+", "fc": "fc1|fc2", "p": "weight|bias"}
_BEIT3_QKV = re.compile(r"^encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.([ABC])\.(weight|bias)$")
_OUR_QKV = re.compile(r"^layers\.(\d+)\.attn\.qkv\.(\w+)\.(weight|bias)$")
# VLMo's buffers and tables this model rebuilds or does not use.
_VLMO_UNUSED = ("text_embeddings.position_ids", "text_embeddings.position_embeddings.weight",
                "relative_position_index", "text_relative_position_index", "text_imag_relative_position_index")
# Absolute position tables of VLMo base-plus -> ours.
_VLMO_ABSOLUTE = {"transformer.pos_embed": "vision_pos_embed",
                  "text_embeddings.position_embeddings.weight": "text_pos_embed"}
_VLMO_FOLDED = ("token_type_embeddings.weight", "text_embeddings.token_type_embeddings.weight")


def _template_regex(template: str, experts: str) -> "re.Pattern":
    pattern = re.escape(template)
    for name, alternatives in {**_PLACEHOLDER, "e": experts}.items():
        pattern = pattern.replace(re.escape("{%s}" % name), f"(?P<{name}>{alternatives})")
    return re.compile(f"^{pattern}$")


_BEIT3_TO_OURS = [(_template_regex(released, "A|B|C"), ours) for ours, released in _BEIT3_KEY_TABLE]
_OURS_TO_BEIT3 = [(_template_regex(ours, "vision|text|vl"), released) for ours, released in _BEIT3_KEY_TABLE]
_VLMO_TO_OURS = [(_template_regex(vlmo, "imag|text|vl"), ours) for ours, vlmo in _VLMO_KEY_TABLE]


def _translate(key: str, rules, experts: Mapping[str, str]) -> Optional[str]:
    """Rename ``key`` with the first matching rule (experts renamed through ``experts``), or None."""
    for pattern, target in rules:
        match = pattern.match(key)
        if match:
            groups = match.groupdict()
            if "e" in groups:
                groups["e"] = experts[groups["e"]]
            return target.format(**groups)
    return None


def split_heads(state_dict: Dict[str, Tensor], prefixes: Tuple[str, ...] = HEAD_KEYS
                ) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
    """Separate task-head weights (``mlm_head``, ``logit_scale``, ...) from backbone weights."""
    heads = {k: v for k, v in state_dict.items() if k.startswith(prefixes)}
    rest = {k: v for k, v in state_dict.items() if k not in heads}
    return rest, heads


def _unknown_note(keys: List[str]) -> List[str]:
    return [f"not converted (unknown to the backbone): {sorted(keys)}"] if keys else []


# ---------------------------------------------------------------------------------------------- formats
def _is_vlmo(sd: Mapping[str, Tensor]) -> bool:
    return any(k.startswith(("transformer.blocks.", "module.transformer.blocks.")) for k in sd)


def _is_released_beit3(sd: Mapping[str, Tensor]) -> bool:
    return any(k.startswith("beit3.") for k in sd)


def _convert_released_beit3(state_dict: Dict[str, Tensor], model: MultiwayTransformer) -> ConvertedCheckpoint:
    """Released BEiT-3 keys -> ours: ``beit3.`` stripped, A/B -> vision/text, q/k/v fused, tables unsqueezed."""
    out: Dict[str, Tensor] = {}
    qkv: Dict[Tuple[str, str, str], Dict[str, Tensor]] = {}
    heads: Dict[str, Tensor] = {}
    unconverted = []
    for key, value in state_dict.items():
        if not key.startswith("beit3."):
            if key.startswith(HEAD_KEYS):
                heads[key] = value
            else:
                unconverted.append(key)
            continue
        key = key[len("beit3."):]
        match = _BEIT3_QKV.match(key)
        if match:
            layer, which, expert, kind = match.groups()
            qkv.setdefault((layer, expert, kind), {})[which] = value
        elif key == "encoder.embed_positions.A.weight":
            out["vision_pos_embed"] = value.unsqueeze(0)
        elif key == "encoder.embed_positions.B.weight":
            out["text_pos_embed"] = value.unsqueeze(0)
        else:
            renamed = _translate(key, _BEIT3_TO_OURS, _BEIT3_EXPERT)
            if renamed is None:
                unconverted.append("beit3." + key)
            else:
                out[renamed] = value
    for (layer, expert, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise CheckpointMismatchError(f"layer {layer} expert {expert}: incomplete q/k/v projections "
                                          f"{sorted(parts)}")
        out[f"layers.{layer}.attn.qkv.{_BEIT3_EXPERT[expert]}.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return ConvertedCheckpoint(out, heads, _unknown_note(unconverted), "beit3")


def _check_vlmo_architecture(model: MultiwayTransformer, absolute_positions: bool) -> None:
    cfg = model.cfg
    wanted = {"layout": Layout.SHARED.value, "text_embed_norm": True, "shared_final_norm": True, "sub_ln": False,
              "absolute_positions": absolute_positions, "relative_position_bias": not absolute_positions}
    wrong = {k: getattr(cfg, k) for k, v in wanted.items() if getattr(cfg, k) != v}
    if wrong:
        kind = ("absolute positions (vlmo_base_plus, vlmo_tiny_plus)" if absolute_positions
                else "relative positions (vlmo_base, vlmo_large, vlmo_tiny)")
        raise ValueError(f"this VLMo checkpoint needs a VLMo architecture with {kind}; this model's config "
                         f"differs in {wrong}")


def _convert_vlmo(state_dict: Dict[str, Tensor], model: MultiwayTransformer) -> ConvertedCheckpoint:
    """Released VLMo keys -> ours (type vectors folded, q/v biases fused with a zero k bias)."""
    state_dict = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()}
    absolute = "transformer.pos_embed" in state_dict     # VLMo base-plus
    _check_vlmo_architecture(model, absolute)
    missing_folded = [k for k in _VLMO_FOLDED if k not in state_dict]
    if missing_folded:
        raise CheckpointMismatchError(f"VLMo checkpoint without {missing_folded}: cannot fold the type embeddings")
    notes: List[str] = []
    out: Dict[str, Tensor] = {}
    heads: Dict[str, Tensor] = {}
    q_v_bias: Dict[str, Dict[str, Tensor]] = {}
    unconverted = []
    for key, value in state_dict.items():
        if key.startswith(VLMO_HEAD_PREFIXES):
            heads[key] = value
        elif absolute and key in _VLMO_ABSOLUTE:
            # VLMo counts positions from 0; this model keeps fairseq's POSITION_OFFSET unused rows in front
            table = value.reshape(1, -1, value.shape[-1])
            out[_VLMO_ABSOLUTE[key]] = torch.cat([table.new_zeros(1, POSITION_OFFSET, table.shape[-1]), table], dim=1)
        elif key.startswith(_VLMO_UNUSED) or key in _VLMO_FOLDED:
            continue  # folded below or rebuilt by this model
        elif key.endswith((".attn.q_bias", ".attn.v_bias")):
            layer = key.split(".")[2]
            q_v_bias.setdefault(layer, {})[key.rsplit(".", 1)[1][0]] = value
        else:
            renamed = _translate(key, _VLMO_TO_OURS, _VLMO_EXPERT)
            if renamed is None:
                unconverted.append(key)
            else:
                out[renamed] = value
    for layer, parts in q_v_bias.items():
        out[f"layers.{layer}.attn.qkv.shared.bias"] = torch.cat([parts["q"], torch.zeros_like(parts["q"]), parts["v"]])

    modality_type = state_dict["token_type_embeddings.weight"]          # row 0 text, row 1 image (2: NLVR2)
    if modality_type.shape[0] > 2:
        heads["token_type_embeddings.weight"] = modality_type
        notes.append("token_type_embeddings has rows beyond text/image (NLVR2's second image); rows 0 and 1 are "
                     "folded into the backbone, the full table is kept with the heads")
    bert_type = state_dict["text_embeddings.token_type_embeddings.weight"][0]
    out["text_embed.weight"] = out["text_embed.weight"] + bert_type
    out["text_embed_norm.bias"] = out["text_embed_norm.bias"] + modality_type[0]
    out["patch_embed.bias"] = out["patch_embed.bias"] + modality_type[1]
    out["cls_token"] = out["cls_token"] + modality_type[1]
    if model.mask_token is not None:
        # VLMo has no masked image modeling: keep this model's [MASK] token
        out["mask_token"] = model.mask_token.detach().clone()
        notes.append("VLMo has no [MASK] image token: mask_token keeps its initial value")
    notes.append("token-type vectors folded into text_embed / text_embed_norm.bias / patch_embed.bias / cls_token")
    return ConvertedCheckpoint(out, heads, notes + _unknown_note(unconverted), "vlmo")


def find_backbone_prefix(state_dict: Mapping[str, Tensor], model: MultiwayTransformer,
                         expected: Sequence[str] = ()) -> str:
    """Where ``model``'s keys sit in a checkpoint of our layout: the first of ``expected`` (the calling
    adapter's ``BACKBONE_PREFIX``) that holds them, else the prefix under which most of them are found
    (``""``: a bare backbone state dict)."""
    own = set(model.state_dict())
    for prefix in expected:
        if any(prefix + k in state_dict for k in own):
            return prefix
    counts: Dict[str, int] = {}
    for key in state_dict:
        parts = key.split(".")
        for i in range(len(parts)):
            if ".".join(parts[i:]) in own:
                prefix = "".join(part + "." for part in parts[:i])
                counts[prefix] = counts.get(prefix, 0) + 1
                break
    return max(counts, key=lambda p: (counts[p], -len(p))) if counts else ""


def _convert_ours(state_dict: Dict[str, Tensor], model: MultiwayTransformer,
                  expected: Sequence[str] = ()) -> ConvertedCheckpoint:
    """Our own layout; under a whole-model prefix everything outside the backbone is kept aside as heads."""
    prefix = find_backbone_prefix(state_dict, model, expected)
    if not prefix:
        out, heads = split_heads(dict(state_dict))
        return ConvertedCheckpoint(out, heads, [], "ours")
    out = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    heads = {k: v for k, v in state_dict.items() if not k.startswith(prefix)}
    notes = [] if prefix in expected else [f"backbone read from the {prefix[:-1]!r} part of a whole-model checkpoint"]
    return ConvertedCheckpoint(out, heads, notes, "ours")


# Recognised in this order: (name, recogniser, converter).
SOURCE_FORMATS: List[Tuple[str, Callable[[Mapping[str, Tensor]], bool],
                           Callable[[Dict[str, Tensor], MultiwayTransformer], ConvertedCheckpoint]]] = [
    ("vlmo", _is_vlmo, _convert_vlmo),
    ("beit3", _is_released_beit3, _convert_released_beit3),
    ("ours", lambda sd: True, _convert_ours),
]


def detect_source_format(state_dict: Mapping[str, Tensor]) -> str:
    """``vlmo``, ``beit3`` (released BEiT-3) or ``ours``."""
    return next(name for name, recognises, _ in SOURCE_FORMATS if recognises(state_dict))


# ---------------------------------------------------------------------------------------------- fitting
def _fit_to_model(sd: Dict[str, Tensor], model: MultiwayTransformer, notes: List[str]) -> Dict[str, Tensor]:
    """Resample what depends on image or text size to this model: absolute vision positions (first 3 rows
    kept, grid bicubic), the relative position table, the patch embedding (FlexiViT-style, e.g. giant's 14
    px patches into a 16 px model) and the text position table (truncated)."""
    from timm.layers import resample_abs_pos_embed, resample_patch_embed

    cfg = model.cfg
    table = sd.get("vision_pos_embed")
    if table is not None and table.shape[1] != cfg.num_vision_positions:
        prefix = 1 + POSITION_OFFSET
        old_grid = int(round((table.shape[1] - prefix) ** 0.5))
        if old_grid ** 2 + prefix != table.shape[1]:
            raise CheckpointMismatchError(f"vision position table of {table.shape[1]} rows is not a square grid + "
                                          f"{prefix}")
        sd["vision_pos_embed"] = resample_abs_pos_embed(
            table.float(), new_size=[cfg.grid_size] * 2, old_size=[old_grid] * 2, num_prefix_tokens=prefix,
            antialias=False).to(table.dtype)
        notes.append(f"vision positions resampled from a {old_grid}x{old_grid} to a "
                     f"{cfg.grid_size}x{cfg.grid_size} patch grid")
    if "rel_pos.table" in sd and cfg.relative_position_bias:
        sd["rel_pos.table"] = fit_table_to_model(sd["rel_pos.table"], cfg.grid_size, cfg.relative_text_span, notes)
    weight = sd.get("patch_embed.weight")
    target = (cfg.patch_size, cfg.patch_size)
    if weight is not None and weight.dim() == 4 and tuple(weight.shape[-2:]) != target:
        sd["patch_embed.weight"] = resample_patch_embed(weight.float(), list(target)).to(weight.dtype)
        notes.append(f"patch embedding resampled from {tuple(weight.shape[-2:])} to {target} pixels")
    text = sd.get("text_pos_embed")
    if text is not None and text.shape[1] > cfg.max_text_positions:
        sd["text_pos_embed"] = text[:, : cfg.max_text_positions]
        notes.append(f"text positions truncated from {text.shape[1]} to {cfg.max_text_positions}")
    return sd


def convert_checkpoint(state_dict: Dict[str, Tensor], model: MultiwayTransformer,
                       prefixes: Sequence[str] = ()) -> ConvertedCheckpoint:
    """Any supported checkpoint (a ``{"model": ...}`` container or the state dict) -> this model's layout.

    ``prefixes``: where the calling adapter keeps the backbone in its whole-model checkpoints (its
    ``BACKBONE_PREFIX``), read first in our own layout."""
    if "model" in state_dict and isinstance(state_dict["model"], dict):
        state_dict = state_dict["model"]
    source = detect_source_format(state_dict)
    if source == "ours":
        converted = _convert_ours(dict(state_dict), model, tuple(prefixes))
    else:
        converter = next(convert for name, _, convert in SOURCE_FORMATS if name == source)
        converted = converter(dict(state_dict), model)
    try:
        converted.state_dict = _fit_to_model(converted.state_dict, model, converted.notes)
    except ValueError as exc:  # a table of another size: say which variant the file is, if that is the cause
        hint = size_hint(converted.state_dict, model)
        if not hint:
            raise
        raise CheckpointMismatchError(f"{exc}{hint}") from exc
    return converted


def checkpoint_filter_fn(state_dict: Dict[str, Tensor], model: MultiwayTransformer) -> Dict[str, Tensor]:
    """timm's contract: a checkpoint's state dict -> the state dict ``model.load_state_dict`` takes.

    Task heads and notes are dropped here; :func:`convert_checkpoint` returns them, :func:`load_pretrained`
    reports them.
    """
    return convert_checkpoint(state_dict, model).state_dict


# ---------------------------------------------------------------------------------------------- sizes
_LAYER_INDEX = re.compile(r"layers\.(\d+)\.")


def checkpoint_size(state_dict: Mapping[str, Tensor]) -> Optional[Tuple[int, int, int]]:
    """(width, layers, FFN width) of a state dict in this package's key layout (``convert_checkpoint``'s
    output), or None when it holds no transformer layers."""
    layers = {int(m.group(1)) for k in state_dict for m in [_LAYER_INDEX.match(k)] if m}
    fc1 = next((v for k, v in state_dict.items() if k.startswith("layers.0.ffn.") and k.endswith("fc1.weight")), None)
    if not layers or fc1 is None:
        return None
    return int(fc1.shape[1]), max(layers) + 1, int(fc1.shape[0])


def _architecture(cfg) -> Tuple:
    """The switches that decide which tensors a model has (beyond its size)."""
    return (cfg.layout, cfg.multiway, cfg.vl_expert_start is not None, cfg.layer_scale_init is not None,
            cfg.relative_position_bias, cfg.absolute_positions)


def _state_architecture(state_dict: Mapping[str, Tensor]) -> Tuple:
    keys = list(state_dict)
    has = lambda part: any(part in k for k in keys)  # noqa: E731
    return (Layout.SHARED.value if has(".attn.qkv.shared.") else Layout.DECOUPLED.value, not has(".ffn.shared."),
            has(".ffn.vl."), has("gamma_attn"), has("rel_pos.table"), has("vision_pos_embed"))


def size_hint(state_dict: Mapping[str, Tensor], model: MultiwayTransformer) -> str:
    """For an error about a checkpoint that does not fit ``model``: which registered variant the file's
    tensors are (inferred from their shapes and names), when that is not the model's size; else ""."""
    from beit3_plugins.registry import BACKBONES

    size = checkpoint_size(state_dict)
    cfg = model.cfg
    own = (cfg.embed_dim, cfg.depth, cfg.ffn_dim)
    if size is None or size == own:
        return ""
    arch = _state_architecture(state_dict)
    configs = {name: BACKBONES.config_of(name) for name in BACKBONES.names()}
    names = [name for name, c in configs.items()
             if c is not None and (c.embed_dim, c.depth, c.ffn_dim) == size and _architecture(c) == arch]
    what = f"a {' / '.join(names)} checkpoint" if names else "a checkpoint of no registered variant"
    return (f"\nthis file is {what} (width {size[0]}, {size[1]} layers, FFN {size[2]}); the model is width "
            f"{own[0]}, {own[1]} layers, FFN {own[2]}: build the variant the file was trained as")


# ---------------------------------------------------------------------------------------------- loading
def load_pretrained(model: MultiwayTransformer, checkpoint: Union[str, Dict[str, Tensor]], strict: bool = True,
                    source: Optional[str] = None, prefixes: Sequence[str] = ()) -> LoadReport:
    """The one loader: read (safely), convert, load, report.

    ``checkpoint`` is a file (read with ``weights_only=True``) or a state dict. Tensors of parts this model
    has pruned (:meth:`MultiwayTransformer.prune_to_vision`) are reported as ``pruned``; task heads as
    ``heads``. With ``strict``, a missing backbone tensor or an *unexpected* one (a backbone tensor this
    model has no place for, e.g. a vision-language expert in a layer the config gives none) raises
    :class:`CheckpointMismatchError`. Shape mismatches always raise. ``prefixes``: the caller's
    ``BACKBONE_PREFIX`` (see :func:`convert_checkpoint`).
    """
    if isinstance(checkpoint, (str, bytes)) or hasattr(checkpoint, "__fspath__"):
        source = source or str(checkpoint)
        checkpoint = load_state_dict_file(checkpoint)
    source = source or "<state dict>"
    converted = convert_checkpoint(checkpoint, model, prefixes)
    own = set(model.state_dict())
    pruned = sorted(k for k in converted.state_dict if k not in own and model.is_pruned_key(k))
    usable = {k: v for k, v in converted.state_dict.items() if k not in pruned}
    try:
        report = load_with_report(model, usable, strict=strict, source=source, notes=converted.notes)
    except CheckpointMismatchError as exc:
        hint = size_hint(converted.state_dict, model)
        if not hint:
            raise
        raise CheckpointMismatchError(f"{exc}{hint}") from exc
    report.heads = converted.heads
    report.pruned = pruned
    return report


# ---------------------------------------------------------------------------------------------- export
def to_released_state_dict(model: MultiwayTransformer, heads: Optional[Dict[str, Tensor]] = None
                           ) -> Dict[str, Tensor]:
    """This backbone's weights in the released BEiT-3 key layout (inverse of the ``beit3`` conversion)."""
    if model.cfg.layout != Layout.DECOUPLED.value:
        raise ValueError("only the decoupled layout has a released BEiT-3 key layout")
    dim = model.cfg.embed_dim
    out: Dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        value = value.detach().clone()
        if key == "vision_pos_embed":
            out["beit3.encoder.embed_positions.A.weight"] = value[0]
            continue
        if key == "text_pos_embed":
            out["beit3.encoder.embed_positions.B.weight"] = value[0]
            continue
        match = _OUR_QKV.match(key)
        if match:
            layer, expert, kind = match.groups()
            for name, part in zip("qkv", value.split(dim, 0)):
                out[f"beit3.encoder.layers.{layer}.self_attn.{name}_proj.{_BEIT3_EXPERT_BACK[expert]}.{kind}"] = \
                    part.clone()
            continue
        renamed = _translate(key, _OURS_TO_BEIT3, _BEIT3_EXPERT_BACK)
        if renamed is None:
            raise KeyError(f"no released name for {key}")
        out["beit3." + renamed] = value
    out.update(heads or {})
    return out


def export_state_dict(model: MultiwayTransformer, heads: Optional[Dict[str, Tensor]] = None
                      ) -> Tuple[Dict[str, Tensor], str]:
    """The checkpoint other plugins load, and its layout name: ``released`` (decoupled backbones, the
    released BEiT-3 keys) or ``beit3_plugins`` (shared backbones, which have no released layout); heads added."""
    if model.cfg.layout == Layout.DECOUPLED.value:
        return to_released_state_dict(model, heads), "released"
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    sd.update(heads or {})
    return sd, "beit3_plugins"


# ---------------------------------------------------------------------------------------------- BEiT -> VLMo init
# BEiT / BEiT v2 image checkpoints (microsoft/unilm ``beit/``, ``beit2/``; timm ``beit_*``) carry ViT-like keys:
# ``blocks.N.{norm1,attn.qkv,attn.q_bias,attn.v_bias,attn.proj,norm2,mlp.fc1,mlp.fc2,gamma_1,gamma_2}``, a
# relative position table per layer (``blocks.N.attn.relative_position_bias_table``) or one shared by all
# (``rel_pos_bias.relative_position_bias_table``), ``cls_token``, ``patch_embed.proj``, ``norm``. Not a loading
# format (a BEiT file has no text side and no experts): an initialisation of a VLMo model, as VLMo's
# stagewise pretraining starts (``beit3-plugins init-vlmo-from-beit``, ``pretraining/init_vlmo.py``).
BEIT_INIT_EXPERTS = ("all", "vision")
_BEIT_KEY_TABLE = [
    ("patch_embed.{p}", "patch_embed.proj.{p}"),
    ("cls_token", "cls_token"),
    ("mask_token", "mask_token"),
    ("layers.{i}.norm1.shared.{p}", "blocks.{i}.norm1.{p}"),
    ("layers.{i}.attn.qkv.shared.weight", "blocks.{i}.attn.qkv.weight"),
    ("layers.{i}.attn.proj.shared.{p}", "blocks.{i}.attn.proj.{p}"),
    ("layers.{i}.gamma_attn", "blocks.{i}.gamma_1"),
    ("layers.{i}.gamma_ffn", "blocks.{i}.gamma_2"),
    ("layers.{i}.norm2.{e}.{p}", "blocks.{i}.norm2.{p}"),
    ("layers.{i}.ffn.{e}.{fc}.{p}", "blocks.{i}.mlp.{fc}.{p}"),
    ("norm.shared.{p}", "norm.{p}"),
]
_BEIT_TO_OURS = [(_template_regex(beit, ""), ours) for ours, beit in _BEIT_KEY_TABLE]
_BEIT_IGNORED = ("lm_head.", "head.", "fc_norm.", "pos_embed", "rel_pos_bias.relative_position_index")


def _beit_targets(key: str, experts: List[str], vl_start: Optional[int]) -> Optional[List[str]]:
    """Our key(s) for a BEiT key: one per target expert for FFN / norm2 weights (VL experts only where the
    layer has one), None for an unknown key."""
    for pattern, target in _BEIT_TO_OURS:
        match = pattern.match(key)
        if match:
            groups = match.groupdict()
            if "{e}" not in target:
                return [target.format(**groups)]
            layer = int(groups["i"])
            return [target.format(e=e, **groups) for e in experts
                    if e != "vl" or (vl_start is not None and layer >= vl_start)]
    return None


def vlmo_state_dict_from_beit(state_dict: Dict[str, Tensor], model: MultiwayTransformer, experts: str = "all"
                              ) -> Tuple[Dict[str, Tensor], List[str]]:
    """A VLMo model's state dict initialised from a BEiT image checkpoint, as VLMo starts stagewise pretraining.

    Attention, its norm, layer scales, patch embedding, [CLS] and the final norm come from BEiT. The BEiT FFN
    (and ``norm2``) becomes the vision expert; with ``experts="all"`` (VLMo paper, Sec. 4.6: "use the parameters
    of BEiT-Base to initialize the self-attention module and all modality experts") it is copied into the
    language and vision-language experts too, with ``"vision"`` (the official code's ``convert_to_textpt_ckpt``
    before text-only pretraining) they keep this model's initial values. BEiT's per-layer relative position
    tables are concatenated by layer into the 2-D rows of VLMo's one table (a shared BEiT table is repeated for
    every layer); text rows and the text embedding keep their initial values. Returns (state dict, notes).
    """
    _check_vlmo_architecture(model, absolute_positions=False)  # BEiT: relative positions only
    if experts not in BEIT_INIT_EXPERTS:
        raise ValueError(f"experts must be one of {list(BEIT_INIT_EXPERTS)}, got {experts!r}")
    if "pos_embed" in state_dict:
        raise NotImplementedError("this BEiT checkpoint uses absolute positions; VLMo base / large use the relative "
                                  "position bias only (convert a BEiT with use_rel_pos_bias)")
    state_dict = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()}
    if "blocks.0.attn.qkv.weight" not in state_dict or "patch_embed.proj.weight" not in state_dict:
        raise ValueError("not a BEiT image checkpoint: no blocks.0.attn.qkv.weight / patch_embed.proj.weight")
    cfg, notes = model.cfg, []
    depth = len({k.split(".")[1] for k in state_dict if k.startswith("blocks.")})
    if depth != cfg.depth:
        raise ValueError(f"the BEiT checkpoint has {depth} layers, the VLMo model {cfg.depth}: pick the matching "
                         "size (vlmo_base for BEiT-Base, vlmo_large for BEiT-Large)")
    out = {k: v.detach().clone() for k, v in model.state_dict().items()}
    targets = ["vision"] + (["text"] + (["vl"] if cfg.vl_expert_start is not None else []) if experts == "all" else [])
    q_v_bias: Dict[str, Dict[str, Tensor]] = {}
    tables: Dict[int, Tensor] = {}
    unconverted = []
    for key, value in state_dict.items():
        if key.startswith(_BEIT_IGNORED) or key.endswith(("relative_position_index", ".attn.k_bias")):
            continue
        if key.endswith((".attn.q_bias", ".attn.v_bias")):
            q_v_bias.setdefault(key.split(".")[1], {})[key.rsplit(".", 1)[1][0]] = value
            continue
        if key.endswith("relative_position_bias_table"):
            if key.startswith("rel_pos_bias."):
                tables.update({i: value for i in range(cfg.depth)})
                notes.append("BEiT's shared relative position table repeated for every layer")
            else:
                tables[int(key.split(".")[1])] = value
            continue
        renamed = _beit_targets(key, targets, cfg.vl_expert_start)
        if renamed is None:
            unconverted.append(key)
        for target in renamed or ():
            out[target] = value.clone()
    for layer, parts in q_v_bias.items():
        out[f"layers.{layer}.attn.qkv.shared.bias"] = torch.cat([parts["q"], torch.zeros_like(parts["q"]), parts["v"]])
    if tables:
        if sorted(tables) != list(range(cfg.depth)):
            raise ValueError(f"BEiT checkpoint has relative position tables for layers {sorted(tables)}, the model "
                             f"{cfg.depth} layers")
        merged = torch.cat([tables[i] for i in range(cfg.depth)], dim=1)
        side = (int(round((merged.shape[0] - 3) ** 0.5)) + 1) // 2
        if side != cfg.grid_size:
            notes.append(f"relative position bias resampled from a {side}x{side} to a {cfg.grid_size}x"
                         f"{cfg.grid_size} patch grid")
            merged = resize_table_to_grid(merged, (side, side), (cfg.grid_size, cfg.grid_size))
        out["rel_pos.table"][: merged.shape[0]] = merged
    notes.append(f"BEiT FFN copied into the {', '.join(targets)} expert(s); text embeddings and text position rows "
                 "keep their initial values")
    if unconverted:
        notes.append(f"not converted (unknown to the backbone): {sorted(unconverted)}")
    return out, notes
