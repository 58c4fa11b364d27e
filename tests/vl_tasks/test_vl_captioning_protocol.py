"""Captioning protocol of the released BEiT-3 code: beam search token for token, the training loss, the masking.

``tests/support/golden/captioning/official_beam_search.json`` was produced in this project's session by running the
official decoding (microsoft/unilm @ 768a3c8, ``beit3/engine_for_finetuning.py`` ``CaptioningHandler.eval_batch``
on ``modeling_finetune.BEiT3ForCaptioning`` over torchscale) on tiny weights generated from the seeded recipe
stored in the file (no weights are committed); it holds the official output rows per case.
"""
import json
from pathlib import Path

import pytest
import torch

from beit3_plugins.backbones import build_backbone
from beit3_plugins.vl_tasks.captioning import CaptioningModel, official_caption_loss
from beit3_plugins.vl_tasks.checkpoints import load_task_checkpoint
from beit3_plugins.vl_tasks.generation import generate

GOLDEN = json.loads((Path(__file__).resolve().parents[1] / "support" / "golden" / "captioning" / "official_beam_search.json").read_text())


def _released_weights(case):
    """The official model's state dict of ``case``, regenerated from the recipe in the golden file."""
    eos = GOLDEN["ids"]["eos"]
    g = torch.Generator().manual_seed(case["weight_seed"])
    sd = {}
    for key, shape in GOLDEN["state_dict"]:
        w = torch.randn(shape, generator=g) * 0.2
        if len(shape) == 1 and key.endswith("weight"):
            w = w + 1.0
        if key == "mlm_head.weight":
            w = w * 10.0
        sd[key] = w
    sd["mlm_head.bias"][eos] += case["eos_bias"]
    return sd


def _model(case, tmp_path):
    c = GOLDEN["config"]
    backbone = build_backbone("beit3_tiny", embed_dim=c["embed_dim"], depth=c["depth"], num_heads=c["num_heads"],
                              ffn_dim=c["ffn_dim"], img_size=c["img_size"], patch_size=c["patch_size"],
                              vocab_size=c["vocab_size"], max_text_positions=c["max_text_positions"],
                              normalize_output=True, drop_path_rate=0.0)
    model = CaptioningModel(backbone, label_smoothing=0.1)
    path = tmp_path / f"{case['name']}.pth"
    torch.save({"model": _released_weights(case)}, path)
    report = load_task_checkpoint(model, str(path))   # the released-file path: beit3.* keys + mlm_head
    assert not report.missing and not report.unexpected
    return model.eval()


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=[c["name"] for c in GOLDEN["cases"]])
def test_beam_search_reproduces_the_official_captions(case, tmp_path):
    ids = GOLDEN["ids"]
    model = _model(case, tmp_path)
    size = GOLDEN["config"]["img_size"]
    image = torch.randn((case["batch"], 3, size, size), generator=torch.Generator().manual_seed(case["image_seed"]))
    ours = generate(model, image, ids["bos"], ids["eos"], ids["mask"], case["max_len"], beam_size=case["num_beams"],
                    length_penalty=case["length_penalty"], pad_id=ids["pad"])
    for row, caption in zip(case["decoded"], ours):
        end = row.index(ids["eos"]) if ids["eos"] in row[1:] else len(row)
        # the official row: <s>, caption, the unfilled <mask> slot, </s>, padding
        assert row[0] == ids["bos"] and row[end - 1] == ids["mask"]
        assert caption == row[1:end - 1], case["name"]
        assert len(caption) <= case["max_len"] - 3
    if case["name"] == "beam3_immediate_eos":
        assert ours == [[], []]
    if case["name"] == "beam3_to_max_len":
        assert all(len(c) == case["max_len"] - 3 for c in ours)


def test_official_loss_smoothing_and_drop_worst():
    """Label smoothing puts eps / (V - 1) on every wrong class (KL to that target, summed over classes); after
    ``drop_worst_after`` steps the worst ``drop_worst_ratio`` of the masked tokens are left out."""
    torch.manual_seed(0)
    logits, target = torch.randn(10, 7), torch.randint(0, 7, (10,))
    eps, n = 0.1, 7
    smooth = torch.full((10, n), eps / (n - 1)).scatter(1, target[:, None], 1 - eps)
    per_token = (smooth * (smooth.log() - torch.log_softmax(logits, -1))).sum(1)
    early = official_caption_loss(logits, target, eps, drop_worst_ratio=0.2, drop_worst_after=100, step=100)
    assert early == pytest.approx(per_token.mean().item(), rel=1e-6)
    late = official_caption_loss(logits, target, eps, drop_worst_ratio=0.2, drop_worst_after=100, step=101)
    assert late == pytest.approx(per_token.sort().values[:8].mean().item(), rel=1e-6)
    assert late < early
