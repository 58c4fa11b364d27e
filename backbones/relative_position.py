"""VLMo's relative position bias: one learned table that every layer reads its own heads from.

Source: VLMo (Bao et al., 2021), released code in microsoft/unilm ``vlmo/`` (``build_relative_position_embed``).
The released checkpoints store ``relative_position_bias_table`` of shape (rows, num_heads * depth); layer i
uses columns [i * H, (i + 1) * H). Its rows are laid out as

* ``[0, V)``: BEiT's 2-D distances between patches of the config's grid, then three rows for the image
  [CLS] (query [CLS], key [CLS], [CLS]-[CLS]); ``V = (2g - 1)^2 + 3``. timm's
  ``gen_relative_position_index(..., class_token=True)`` produces exactly this index;
* ``V``: a text query looking at an image key; ``V + 1``: an image query looking at a text key;
* ``[V + 2, V + 2 + 2S)``: 1-D text distances for texts of up to ``S`` tokens (VLMo: S = 196), whose last
  three rows play the [CLS] roles for text.

This backbone orders a fused sequence vision first where VLMo puts text first; attention does not care
about the order as long as the bias is built for the order used, which :meth:`RelativePositionBias.forward`
does. Images on another grid than the config's read a bicubically resampled copy of the 2-D part.

A checkpoint loaded into a model of another resolution gets its table resampled once, the way VLMo's (and
BEiT's) own loader does it (:func:`resample_distance_grid`): the source distances are spread over the target
range on a geometric progression and an interpolating bicubic spline (scipy's ``RectBivariateSpline`` with
``s=0``, what ``interp2d(kind="cubic")`` computes on a rectangular grid; ``interp2d`` is gone from scipy 1.14)
is evaluated at the integer target distances. timm's ``resize_rel_pos_bias_table`` falls back to linear
interpolation without scipy and calls the removed ``interp2d`` with it, so it is not used for this.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn
from timm.layers import resize_rel_pos_bias_table_simple
from timm.layers.pos_embed_rel import gen_relative_position_index

__all__ = ["TokenSpan", "RelativePositionBias", "vision_distance_rows", "resample_distance_grid", "resize_table_to_grid",
           "fit_table_to_model"]


def vision_distance_rows(grid: Tuple[int, int]) -> int:
    """Rows of the 2-D (image) part of a table for a patch grid, [CLS] rows included."""
    return (2 * grid[0] - 1) * (2 * grid[1] - 1) + 3


@dataclass(frozen=True)
class TokenSpan:
    """Which tokens a query or key axis holds: ``num_vision`` image tokens ([CLS] + patches) first, then
    text tokens at positions ``[text_start, text_start + text_len)``. ``grid`` is needed only when image
    tokens attend to image tokens."""

    num_vision: int = 0
    grid: Optional[Tuple[int, int]] = None
    text_start: int = 0
    text_len: int = 0

    @property
    def size(self) -> int:
        return self.num_vision + self.text_len


class RelativePositionBias(nn.Module):
    """The shared table and the per-layer additive attention bias built from it."""

    def __init__(self, grid: int, num_heads: int, depth: int, text_span: int) -> None:
        super().__init__()
        if text_span < 2:
            raise ValueError(f"text_span must be >= 2, got {text_span}")
        self.grid = (grid, grid)
        self.num_heads = num_heads
        self.depth = depth
        self.text_span = text_span
        self.vision_rows = vision_distance_rows(self.grid)
        self.table = nn.Parameter(torch.zeros(self.vision_rows + 2 + 2 * text_span, num_heads * depth))
        self.register_buffer("vision_index", gen_relative_position_index(self.grid, class_token=True),
                             persistent=False)

    # ------------------------------------------------------------------ index pieces
    def _vision_block(self, grid: Tuple[int, int]) -> Tensor:
        table = self.table[: self.vision_rows]
        if tuple(grid) == self.grid:
            return table[self.vision_index]
        rows = vision_distance_rows(grid)
        table = resize_rel_pos_bias_table_simple(table, new_window_size=grid, new_bias_shape=(rows, table.shape[1]))
        return table[gen_relative_position_index(tuple(grid), class_token=True, device=table.device)]

    def _text_index(self, query: TokenSpan, key: TokenSpan) -> Tensor:
        last = max(query.text_start + query.text_len, key.text_start + key.text_len)
        if last > self.text_span:
            raise ValueError(f"text of {last} tokens is longer than the {self.text_span} positions the relative "
                             "position table covers; truncate it in the tokenizer (max_len)")
        device = self.table.device
        q = torch.arange(query.text_start, query.text_start + query.text_len, device=device)
        k = torch.arange(key.text_start, key.text_start + key.text_len, device=device)
        base = self.vision_rows + 2
        index = base + self.text_span - 2 + (k[None, :] - q[:, None])
        total = base + 2 * self.text_span
        index = torch.where(q[:, None] == 0, total - 3, index)   # text [CLS] as the query
        index = torch.where(k[None, :] == 0, total - 2, index)   # text [CLS] as the key
        return torch.where((q[:, None] == 0) & (k[None, :] == 0), total - 1, index)

    def _subgrid_index(self, grid: Tuple[int, int], cls_token: bool) -> Tensor:
        """Rows of the table for image tokens on a ``grid`` no larger than the table's own: the same 2-D
        patch distances read directly (a ViTDet window of 14 x 14 sees the distances it really has, in
        patches), [CLS] rows laid out as timm's ``gen_relative_position_index(class_token=True)``."""
        if tuple(grid) == self.grid:
            return self.vision_index if cls_token else self.vision_index[1:, 1:]
        device = self.table.device
        ys, xs = torch.meshgrid(torch.arange(grid[0], device=device), torch.arange(grid[1], device=device),
                                indexing="ij")
        ys, xs = ys.reshape(-1), xs.reshape(-1)
        index = ((ys[:, None] - ys[None, :] + self.grid[0] - 1) * (2 * self.grid[1] - 1)
                 + (xs[:, None] - xs[None, :] + self.grid[1] - 1))
        if not cls_token:
            return index
        full = index.new_empty(index.shape[0] + 1, index.shape[1] + 1)
        full[1:, 1:] = index
        full[0, :] = self.vision_rows - 3
        full[:, 0] = self.vision_rows - 2
        full[0, 0] = self.vision_rows - 1
        return full

    def vision_bias(self, grid: Tuple[int, int], cls_token: bool = True, layer: Optional[int] = None) -> Tensor:
        """Bias (heads, N, N) of one layer (``layer``) or (depth * heads, N, N) of all, for image tokens on
        ``grid`` ([CLS] first when ``cls_token``). Grids inside the table's own (ViTDet windows) read their
        distances directly; larger grids, and smaller ones with a [CLS] token (another input resolution, as in
        :meth:`forward`), read the bicubically resampled table."""
        grid = tuple(grid)
        heads = slice(None) if layer is None else slice(layer * self.num_heads, (layer + 1) * self.num_heads)
        fits = grid[0] <= self.grid[0] and grid[1] <= self.grid[1]
        if fits and (not cls_token or grid == self.grid):
            bias = self.table[:, heads][self._subgrid_index(grid, cls_token)]
        else:
            bias = self._vision_block(grid)[..., heads]
            bias = bias if cls_token else bias[1:, 1:]
        return bias.permute(2, 0, 1)

    # ------------------------------------------------------------------ bias
    def forward(self, query: TokenSpan, key: TokenSpan) -> Tensor:
        """Bias of shape (depth, heads, Nq, Nk) for every layer at once (one gather, sliced per layer)."""
        columns = self.table.shape[1]
        rows = []
        if query.num_vision:
            parts = []
            if key.num_vision:
                if query.num_vision != key.num_vision or query.grid is None:
                    raise ValueError("image queries need the image keys of the same grid")
                parts.append(self._vision_block(query.grid))
            if key.text_len:
                parts.append(self.table[self.vision_rows + 1].expand(query.num_vision, key.text_len, columns))
            rows.append(torch.cat(parts, dim=1))
        if query.text_len:
            parts = []
            if key.num_vision:
                parts.append(self.table[self.vision_rows].expand(query.text_len, key.num_vision, columns))
            if key.text_len:
                parts.append(self.table[self._text_index(query, key)])
            rows.append(torch.cat(parts, dim=1))
        bias = torch.cat(rows, dim=0)  # (Nq, Nk, depth * heads)
        return bias.permute(2, 0, 1).reshape(self.depth, self.num_heads, query.size, key.size)


def _geometric_source_distances(src: int, dst: int) -> "np.ndarray":
    """Coordinates of ``src`` source distances (odd count, centre 0) spread over ``dst`` target distances:
    steps 1, q, q^2, ... outward from 0, with q found by bisection so the outermost lands at ~dst // 2."""
    import numpy as np

    half = src // 2

    def reach(ratio: float) -> float:  # 1 + ratio + ... + ratio^(half-1)
        return (1.0 - ratio ** half) / (1.0 - ratio)

    low, high = 1.01, 1.5
    while high - low > 1e-6:
        ratio = (low + high) / 2.0
        if reach(ratio) > dst // 2:
            high = ratio
        else:
            low = ratio
    steps = [1.0]
    for i in range(1, half):
        steps.append(steps[-1] + ratio ** i)
    positive = np.asarray(steps)
    return np.concatenate([-positive[::-1], [0.0], positive])


def resample_distance_grid(table: Tensor, old_grid: Tuple[int, int], new_grid: Tuple[int, int]) -> Tensor:
    """The 2-D distance rows (``(2g - 1)^2`` of them, [CLS] rows excluded) of a (rows, columns) table moved to
    another patch grid with VLMo's / BEiT's load-time bicubic spline (see the module docstring)."""
    import numpy as np
    from scipy.interpolate import RectBivariateSpline

    src = (2 * old_grid[0] - 1, 2 * old_grid[1] - 1)
    dst = (2 * new_grid[0] - 1, 2 * new_grid[1] - 1)
    if table.shape[0] != src[0] * src[1]:
        raise ValueError(f"expected {src[0] * src[1]} distance rows for a {old_grid} grid, got {table.shape[0]}")
    ys, xs = _geometric_source_distances(src[0], dst[0]), _geometric_source_distances(src[1], dst[1])
    ty, tx = dst[0] // 2, dst[1] // 2
    target_y, target_x = np.arange(-ty, ty + 1, dtype=np.float64), np.arange(-tx, tx + 1, dtype=np.float64)
    values = table.detach().float().cpu().numpy().astype(np.float64)
    columns = []
    for c in range(values.shape[1]):
        spline = RectBivariateSpline(ys, xs, values[:, c].reshape(src), kx=3, ky=3, s=0)
        columns.append(spline(target_y, target_x).reshape(-1))
    out = torch.from_numpy(np.stack(columns, axis=1)).to(torch.float32)
    return out.to(device=table.device, dtype=table.dtype)


def resize_table_to_grid(table: Tensor, old_grid: Tuple[int, int], new_grid: Tuple[int, int]) -> Tensor:
    """A checkpoint's full table moved to another patch grid: the 2-D distance rows resampled as VLMo's loader
    does (:func:`resample_distance_grid`), the [CLS], cross-modal and text rows kept."""
    distance_rows = vision_distance_rows(old_grid) - 3
    resampled = resample_distance_grid(table[:distance_rows], old_grid, new_grid)
    return torch.cat([resampled, table[distance_rows:]], dim=0)


def fit_table_to_model(table: Tensor, grid_size: int, text_span: int, notes: List[str]) -> Tensor:
    """A checkpoint's table for a model with a ``grid_size`` patch grid (resampled when the checkpoint's grid,
    inferred from its row count, differs; a note says so)."""
    vision_rows = table.shape[0] - 2 - 2 * text_span
    side = (int(round(max(vision_rows - 3, 0) ** 0.5)) + 1) // 2
    if side < 1 or vision_distance_rows((side, side)) != vision_rows:
        raise ValueError(f"a relative position table of {table.shape[0]} rows is not a square patch grid plus the "
                         f"text rows for relative_text_span={text_span}; set relative_text_span to the "
                         "checkpoint's (VLMo: max_text_len_of_initckpt)")
    if side != grid_size:
        notes.append(f"relative position bias resampled from a {side}x{side} to a {grid_size}x{grid_size} patch grid")
        table = resize_table_to_grid(table, (side, side), (grid_size, grid_size))
    return table
