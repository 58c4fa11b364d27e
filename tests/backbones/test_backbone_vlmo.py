"""Released VLMo checkpoints load and give VLMo's outputs.

No VLMo package installs here (it needs pytorch-lightning 1.x and transformers' BertEmbeddings), so the
reference below is a direct, loop-level transcription of VLMo's forward as its paper and released code
describe it: **text first** in fused input, BERT embeddings (word + token type 0, LayerNorm), a modality
type embedding (text 0, image 1), one relative position table whose columns are sliced per layer, shared
attention with q/v biases only, per-modality FFN experts (VL expert in the top layers), a shared final norm.
It shares no code with the backbone: its index tables are built entry by entry.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from beit3_plugins.backbones import build_backbone
from beit3_plugins.checkpoint import CheckpointMismatchError
from beit3_plugins.registry import BACKBONES

D, DEPTH, HEADS, FFN, GRID, PATCH, VOCAB, SPAN, VL_START = 64, 4, 4, 256, 8, 8, 1024, 64, 3


def _with_cls_roles(inner, size, last):
    """VLMo's convention for a [CLS]-first axis: rows `last - 2` ([CLS] query), `last - 1` ([CLS] key) and
    `last` ([CLS] with itself); `inner(i, j)` for every other pair."""
    table = torch.zeros(size, size, dtype=torch.long)
    for i in range(size):
        for j in range(size):
            if i == 0 and j == 0:
                table[i, j] = last
            elif j == 0:
                table[i, j] = last - 1
            elif i == 0:
                table[i, j] = last - 2
            else:
                table[i, j] = inner(i, j)
    return table


def _vlmo_index_tables(grid, span, text_len):
    """VLMo's three index tables (image, text, text-then-image), built entry by entry."""
    n_dist = (2 * grid - 1) ** 2 + 3
    total = n_dist + 2 * span + 2
    coords = [(r, c) for r in range(grid) for c in range(grid)]

    def patch_distance(i, j):
        (ri, ci), (rj, cj) = coords[i - 1], coords[j - 1]
        return (ri - rj + grid - 1) * (2 * grid - 1) + (ci - cj + grid - 1)

    n_img = grid * grid + 1
    image = _with_cls_roles(patch_distance, n_img, n_dist - 1)
    text = _with_cls_roles(lambda i, j: (j - i) - (2 - span) + n_dist + 2, text_len, total - 1)
    fused = torch.cat([torch.cat([text, torch.full((text_len, n_img), n_dist)], 1),
                       torch.cat([torch.full((n_img, text_len), n_dist + 1), image], 1)], 0)
    return image, text, fused


class _Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(D, FFN), nn.Linear(FFN, D)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class _Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(D, 3 * D, bias=False)
        self.q_bias, self.v_bias = nn.Parameter(torch.randn(D)), nn.Parameter(torch.randn(D))
        self.proj = nn.Linear(D, D)

    def forward(self, x, keep, bias):
        b, n, _ = x.shape
        qkv = F.linear(x, self.qkv.weight, torch.cat([self.q_bias, torch.zeros(D), self.v_bias]))
        q, k, v = qkv.reshape(b, n, 3, HEADS, D // HEADS).permute(2, 0, 3, 1, 4)
        scores = (q * (D // HEADS) ** -0.5) @ k.transpose(-2, -1) + bias[None]
        scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
        return self.proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, D))


class _Block(nn.Module):
    def __init__(self, with_vl):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(D, eps=1e-6), _Attention()
        self.norm2_text, self.norm2_imag = nn.LayerNorm(D, eps=1e-6), nn.LayerNorm(D, eps=1e-6)
        self.mlp_text, self.mlp_imag = _Mlp(), _Mlp()
        if with_vl:
            self.norm2_vl, self.mlp_vl = nn.LayerNorm(D, eps=1e-6), _Mlp()
        self.gamma_1, self.gamma_2 = nn.Parameter(torch.rand(D)), nn.Parameter(torch.rand(D))

    def forward(self, x, keep, bias, kind, text_len):
        x = x + self.gamma_1 * self.attn(self.norm1(x), keep, bias)
        if kind == "image":
            return x + self.gamma_2 * self.mlp_imag(self.norm2_imag(x))
        if kind == "text":
            return x + self.gamma_2 * self.mlp_text(self.norm2_text(x))
        if hasattr(self, "mlp_vl"):
            return x + self.gamma_2 * self.mlp_vl(self.norm2_vl(x))
        t, i = x[:, :text_len], x[:, text_len:]
        return torch.cat([t + self.gamma_2 * self.mlp_text(self.norm2_text(t)),
                          i + self.gamma_2 * self.mlp_imag(self.norm2_imag(i))], 1)


class _Transformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, D, PATCH, PATCH)
        self.cls_token = nn.Parameter(torch.randn(1, 1, D))
        self.blocks = nn.ModuleList(_Block(i >= VL_START) for i in range(DEPTH))
        self.norm = nn.LayerNorm(D, eps=1e-6)


class _TextEmbeddings(nn.Module):  # BERT's embeddings (no absolute positions with relative position bias)
    def __init__(self):
        super().__init__()
        self.word_embeddings = nn.Embedding(VOCAB, D)
        self.position_embeddings = nn.Embedding(SPAN, D)   # in the checkpoint, unused by rel-pos VLMo
        self.token_type_embeddings = nn.Embedding(2, D)
        self.LayerNorm = nn.LayerNorm(D, eps=1e-12)
        self.register_buffer("position_ids", torch.arange(SPAN)[None])

    def forward(self, ids):
        return self.LayerNorm(self.word_embeddings(ids) + self.token_type_embeddings(torch.zeros_like(ids)))


class VlmoReference(nn.Module):
    def __init__(self):
        super().__init__()
        self.transformer = _Transformer()
        self.text_embeddings = _TextEmbeddings()
        self.token_type_embeddings = nn.Embedding(2, D)
        rows = (2 * GRID - 1) ** 2 + 3 + 2 * SPAN + 2
        self.relative_position_bias_table = nn.Parameter(torch.randn(rows, HEADS * DEPTH))
        self.pooler = nn.Module()
        self.pooler.dense = nn.Linear(D, D)
        self.itm_score = nn.Module()
        self.itm_score.fc = nn.Linear(D, 2)

    def _bias(self, index):
        return self.relative_position_bias_table[index].permute(2, 0, 1).chunk(DEPTH, dim=0)

    def _image(self, image):
        x = self.transformer.patch_embed.proj(image).flatten(2).transpose(1, 2)
        x = torch.cat([self.transformer.cls_token.expand(len(x), -1, -1), x], 1)
        return x + self.token_type_embeddings.weight[1]

    def _text(self, ids):
        return self.text_embeddings(ids) + self.token_type_embeddings.weight[0]

    def _run(self, x, keep, index, kind, text_len=0):
        for block, bias in zip(self.transformer.blocks, self._bias(index)):
            x = block(x, keep, bias, kind, text_len)
        return self.transformer.norm(x)

    def image(self, image):
        x = self._image(image)
        index = _vlmo_index_tables(GRID, SPAN, 1)[0]
        return self._run(x, torch.ones(x.shape[:2], dtype=torch.bool), index, "image")

    def text(self, ids, keep):
        return self._run(self._text(ids), keep, _vlmo_index_tables(GRID, SPAN, ids.shape[1])[1], "text")

    def fused(self, image, ids, keep):
        x = torch.cat([self._text(ids), self._image(image)], 1)
        keep = torch.cat([keep, torch.ones(len(ids), GRID * GRID + 1, dtype=torch.bool)], 1)
        return self._run(x, keep, _vlmo_index_tables(GRID, SPAN, ids.shape[1])[2], "vl", ids.shape[1])


@pytest.fixture(scope="module")
def vlmo_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    reference = VlmoReference().eval()
    with torch.no_grad():  # nothing left at a trivial init (LayerNorms, biases, type vectors)
        for p in reference.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    path = tmp_path_factory.mktemp("vlmo") / "vlmo_tiny.ckpt"
    torch.save({"state_dict": reference.state_dict(), "epoch": 3}, path)  # Lightning's container key
    return reference, path


def _inputs():
    torch.manual_seed(1)
    image = torch.randn(2, 3, GRID * PATCH, GRID * PATCH)
    ids = torch.randint(4, VOCAB, (2, 9))
    keep = torch.ones(2, 9, dtype=torch.bool)
    keep[1, 6:] = False
    return image, ids, keep


def test_vlmo_checkpoint_gives_vlmo_outputs_in_every_mode(vlmo_checkpoint):
    reference, path = vlmo_checkpoint
    ours = build_backbone("vlmo_tiny", checkpoint=str(path)).eval()
    report = ours.load_report
    assert not report.missing and not report.unexpected, report.summary()
    assert {"pooler.dense.weight", "itm_score.fc.bias"} <= set(report.heads)
    image, ids, keep = _inputs()
    pad = ~keep
    with torch.no_grad():
        got_image = ours.forward_vision(image).hidden
        got_text = ours.forward_text(ids, pad).hidden
        fused = ours.forward_fused(image, ids, pad)
        ref_image, ref_text = reference.image(image), reference.text(ids, keep)
        ref_fused = reference.fused(image, ids, keep)
    assert (got_image - ref_image).abs().max() < 1e-4
    assert (got_text[keep] - ref_text[keep]).abs().max() < 1e-4   # padded rows are not outputs
    n_text = ids.shape[1]
    assert (fused.vision_tokens - ref_fused[:, n_text:]).abs().max() < 1e-4
    assert (fused.text_tokens[keep] - ref_fused[:, :n_text][keep]).abs().max() < 1e-4


def test_vlmo_cached_decoding_matches_the_full_pass(vlmo_checkpoint):
    _, path = vlmo_checkpoint
    ours = build_backbone("vlmo_tiny", checkpoint=str(path)).eval()
    image, ids, _ = _inputs()
    causal = torch.ones(9, 9, dtype=torch.bool).triu(1)
    n_img = GRID * GRID + 1
    blocked = torch.zeros(n_img + 9, n_img + 9, dtype=torch.bool)
    blocked[:n_img, n_img:] = True
    blocked[n_img:, n_img:] = causal
    with torch.no_grad():
        full = ours.forward_fused(image, ids, attn_mask=blocked).text_tokens
        prompt = ours.forward_fused(image, ids[:, :4], attn_mask=blocked[:n_img + 4, :n_img + 4], use_cache=True)
        past, steps = prompt.past_kv, [prompt.text_tokens]
        for t in range(4, 9):
            out = ours.forward_text_step(ids[:, t:t + 1], past, position_start=t)
            past = out.past_kv
            steps.append(out.hidden)
    assert (torch.cat(steps, 1) - full).abs().max() < 1e-4


def test_vlmo_table_is_resampled_for_another_resolution(vlmo_checkpoint):
    _, path = vlmo_checkpoint
    bigger = build_backbone("vlmo_tiny", checkpoint=str(path), img_size=96)
    assert any("resampled from a 8x8 to a 12x12" in note for note in bigger.load_report.notes)
    rows = (2 * 12 - 1) ** 2 + 3 + 2 * SPAN + 2
    assert bigger.rel_pos.table.shape == (rows, HEADS * DEPTH)
    reference, _ = vlmo_checkpoint
    # cross-modal and text rows are carried over unchanged
    assert torch.equal(bigger.rel_pos.table[-(2 * SPAN + 2):], reference.relative_position_bias_table[-(2 * SPAN + 2):])
    assert bigger.forward_vision(torch.randn(1, 3, 96, 96)).hidden.shape == (1, 145, D)


def test_vlmo_checkpoint_into_a_beit3_model_is_refused_with_the_reason(vlmo_checkpoint):
    _, path = vlmo_checkpoint
    with pytest.raises(ValueError, match="VLMo architecture"):
        build_backbone("beit3_tiny", checkpoint=str(path))


def test_vlmo_checkpoint_of_another_size_names_the_tensors(vlmo_checkpoint):
    _, path = vlmo_checkpoint
    with pytest.raises(CheckpointMismatchError, match="layers.0.attn.qkv.shared.weight"):
        build_backbone("vlmo_tiny", checkpoint=str(path), embed_dim=32, num_heads=4)


def test_text_longer_than_the_relative_table_is_a_clear_error():
    model = BACKBONES.build("vlmo_tiny")
    with pytest.raises(ValueError, match="64 text positions"):
        model.forward_text(torch.randint(4, VOCAB, (1, SPAN + 1)))
    assert math.isfinite(model.forward_text(torch.randint(4, VOCAB, (1, SPAN))).hidden.sum().item())


def test_strict_loading_refuses_a_vl_expert_the_model_has_no_place_for(vlmo_checkpoint, tmp_path):
    """A file whose VL experts start one layer earlier than the model's ``vl_expert_start`` must not load
    "successfully" with layer 2's vision-language expert silently dropped."""
    _, path = vlmo_checkpoint
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    earlier = {k.replace("blocks.3.", "blocks.2."): v.clone() for k, v in state.items()
               if k.startswith("transformer.blocks.3.") and ("_vl." in k)}
    assert {"transformer.blocks.2.mlp_vl.fc1.weight", "transformer.blocks.2.norm2_vl.weight"} <= set(earlier)
    bad = tmp_path / "vlmo_vl_from_2.ckpt"
    torch.save({"state_dict": {**state, **earlier}}, bad)
    with pytest.raises(CheckpointMismatchError, match=r"(?s)unexpected.*layers\.2\.ffn\.vl\.fc1\.weight"):
        build_backbone("vlmo_tiny", checkpoint=str(bad))
    loose = build_backbone("vlmo_tiny", checkpoint=str(bad), strict=False).load_report
    assert "layers.2.norm2.vl.weight" in loose.unexpected and "pooler.dense.weight" in loose.heads
    assert "pooler.dense.weight" not in loose.unexpected                 # heads are kept aside, not unexpected
    fits = build_backbone("vlmo_tiny", checkpoint=str(bad), vl_expert_start=2)
    assert not fits.load_report.missing and not fits.load_report.unexpected
    torch.testing.assert_close(fits.layers[2].ffn.vl.fc1.weight, earlier["transformer.blocks.2.mlp_vl.fc1.weight"])
    # a model pruned to its vision path still refuses it: layer 2's VL expert is not a part it pruned
    pruned = BACKBONES.build("vlmo_tiny")
    pruned.prune_to_vision()
    from beit3_plugins.backbones import load_pretrained

    with pytest.raises(CheckpointMismatchError, match=r"layers\.2\.ffn\.vl"):
        load_pretrained(pruned, str(bad))
    assert "layers.3.ffn.vl.fc1.weight" in load_pretrained(pruned, str(path)).pruned
