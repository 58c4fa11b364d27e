"""beit3_giant has the paper's parameter breakdown (BEiT-3, Table 1), checked without allocating it."""
import torch

from beit3_plugins.registry import BACKBONES

M = 1_000_000
# BEiT-3 paper, Table 1: V-FFN 692M, L-FFN 692M, VL-FFN 52M, shared attention 317M, word embedding 90M,
# total "1.9B". The paper rounds to whole millions (+-0.5M) and may leave out the FFN biases and the
# LayerNorms that belong to an expert (our groups count them: ~22.5K per expert per layer, 0.9M over 40
# layers), so each group may differ by 0.5M + 1M.
PAPER = {"vision_expert": 692 * M, "text_expert": 692 * M, "vl_expert": 52 * M, "shared_attention": 317 * M,
         "word_embedding": 90 * M}
TOL = 1.5 * M


def build_on_meta():
    with torch.device("meta"):
        return BACKBONES.build("beit3_giant")


def test_giant_parameter_breakdown_matches_the_paper():
    model = build_on_meta()
    assert all(p.is_meta for p in model.parameters())  # nothing allocated: 1.8B floats would be 7.4 GB
    groups = model.parameter_groups()
    for name, expected in PAPER.items():
        assert abs(groups[name] - expected) <= TOL, (name, groups[name], expected)
    total = sum(p.numel() for p in model.parameters())
    assert total == sum(groups.values())  # every parameter belongs to one group
    # the paper's "1.9B" is the sum of its groups (1843M) rounded; we add patch/position embeddings (2.6M)
    assert abs(total - sum(PAPER.values())) <= 5 * TOL
    assert round(total / 1e9, 1) in (1.8, 1.9)


def test_giant_structure_behind_the_numbers():
    model = build_on_meta()
    cfg = model.cfg
    groups = model.parameter_groups()
    per_layer_expert = sum(p.numel() for n, p in model.layers[0].named_parameters() if ".vision." in n)
    final_norm = 2 * cfg.embed_dim  # each expert also owns its copy of the output LayerNorm
    assert groups["vision_expert"] == cfg.depth * per_layer_expert + final_norm
    assert groups["text_expert"] == groups["vision_expert"]
    vl_layers = [i for i, layer in enumerate(model.layers) if layer.has_vl_expert]
    assert vl_layers == [37, 38, 39]  # VL experts in the top three layers only
    assert groups["vl_expert"] == per_layer_expert * len(vl_layers) + final_norm
    # attention (and its input norm) is shared: one copy per layer, no per-modality attention weights
    assert not [n for n, _ in model.named_parameters() if ".attn." in n and (".vision." in n or ".text." in n)]
    assert groups["word_embedding"] == cfg.vocab_size * cfg.embed_dim == 64010 * 1408
