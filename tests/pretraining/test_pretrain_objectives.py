"""Each pretraining objective's loss and gradients, stagewise freezing, VQ-KD loading, export round-trip."""
import math

import numpy as np
import pytest
import torch

from beit3_plugins.backbones import build_backbone
from beit3_plugins.pretraining import (IGNORE_INDEX, MaskedDataModel, apply_stage, export_state_dict,
                                       patch_pixel_targets, sample_hard_negatives)
from beit3_plugins.pretraining.vqkd import build_vqkd, checkpoint_filter_fn
from beit3_plugins.registry import BACKBONES

torch.set_num_threads(1)


def _tokenizer(seed=0):
    torch.manual_seed(seed)
    tok = build_vqkd("vqkd_tiny", num_codes=32)
    tok.init_codebook(torch.rand(4, 3, 64, 64) * 2 - 1, seed=seed)
    return tok


def _model(name="beit3_tiny", mim_target="vqkd", vlmo=False):
    torch.manual_seed(0)
    backbone = BACKBONES.build(name, vocab_size=64, drop_path_rate=0.0)
    return MaskedDataModel(backbone, mim_target, _tokenizer() if mim_target == "vqkd" else None, vlmo_heads=vlmo)


def _text(batch=3, length=12, vocab=64):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(4, vocab - 1, (batch, length), generator=g)
    padding = torch.zeros(batch, length, dtype=torch.bool)
    padding[0, -3:] = True
    targets = torch.full_like(ids, IGNORE_INDEX)
    targets[:, 2:5] = ids[:, 2:5]
    masked = ids.clone()
    masked[:, 2:5] = 63
    return masked, padding, targets, ids


def _image_mask(batch=3, n=64, k=25):
    mask = torch.zeros(batch, n, dtype=torch.bool)
    for b in range(batch):
        mask[b, torch.randperm(n, generator=torch.Generator().manual_seed(b))[:k]] = True
    return mask


def _grads(model):
    return {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def test_text_mlm_loss_uses_only_masked_positions_and_text_expert():
    model = _model()
    ids, padding, targets, _ = _text()
    logs = {}
    loss = model.text_mlm(ids, padding, targets, logs)
    assert torch.isfinite(loss) and abs(float(loss) - np.log(64)) < 1.5
    assert logs["mlm_count"] == 9
    loss.backward()
    grads = _grads(model)
    assert "mlm_head.weight" in grads and "backbone.layers.0.ffn.text.fc1.weight" in grads
    assert not any(".vision." in n for n in grads) and "mim_head.weight" not in grads


def test_image_mim_vqkd_targets_are_tokenizer_codes():
    model = _model()
    image = torch.rand(3, 3, 64, 64) * 2 - 1
    mask = _image_mask()
    logs = {}
    loss = model.image_mim(image, mask, logs)
    assert logs["mim_count"] == 75 and torch.isfinite(loss)
    loss.backward()
    grads = _grads(model)
    assert "mim_head.weight" in grads and "backbone.mask_token" in grads
    assert not any(n.startswith("tokenizer.") for n in grads)          # the tokenizer is frozen
    codes = model.tokenizer.get_codebook_indices(image)
    assert codes.shape == (3, 64) and codes.max() < 32


def test_image_mim_pixel_target_is_per_patch_normalised():
    image = torch.rand(2, 3, 64, 64)
    t = patch_pixel_targets(image, 8)
    assert t.shape == (2, 64, 192)
    assert torch.allclose(t.mean(-1), torch.zeros(2, 64), atol=1e-5)
    assert torch.allclose(t.std(-1, unbiased=False), torch.ones(2, 64), atol=1e-3)
    model = _model(mim_target="pixel")
    logs = {}
    loss = model.image_mim(image * 2 - 1, _image_mask(2), logs)
    assert torch.isfinite(loss) and logs["mim_count"] == 50 and model.mim_head.out_features == 192


def test_mvlm_separate_and_joint_masking_losses():
    model = _model()
    ids, padding, targets, clean = _text()
    image = torch.rand(3, 3, 64, 64) * 2 - 1
    logs = {}
    # separate: pair 0 text-masked, pairs 1-2 image-masked
    mask = _image_mask()
    mask[0] = False
    targets_sep = targets.clone()
    targets_sep[1:] = IGNORE_INDEX
    ids_sep = torch.where(targets_sep != IGNORE_INDEX, ids, clean)
    loss = model.pair_mvlm(image, mask, ids_sep, padding, targets_sep, logs)
    assert logs["mvlm_text_count"] == 3 and logs["mvlm_image_count"] == 50 and torch.isfinite(loss)
    loss.backward()
    assert "mlm_head.weight" in _grads(model) and "mim_head.weight" in _grads(model)
    logs = {}
    model.pair_mvlm(image, _image_mask(), ids, padding, targets, logs)   # joint: both modalities masked
    assert logs["mvlm_text_count"] == 9 and logs["mvlm_image_count"] == 75


def test_vlmo_itc_itm_mlm():
    model = _model("vlmo_tiny", vlmo=True)
    ids, padding, targets, clean = _text(batch=4)
    image = torch.rand(4, 3, 64, 64) * 2 - 1
    logs = {}
    with torch.no_grad():  # temperature so high that every logit is ~0: each row's loss is log(4 candidates)
        model.logit_scale.fill_(math.log(1e-4))
    loss = model.vlmo(image, clean, padding, ids, targets, logs, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    assert logs["itc_count"] == 8 and logs["itm_count"] == 12 and logs["vlmo_mlm_count"] == 12
    assert abs(logs["itc_loss"] / 8 - np.log(4)) < 1e-3         # both directions, over the 4 in-batch candidates
    loss.backward()
    grads = _grads(model)
    for name in ("vision_head.weight", "language_head.weight", "logit_scale", "itm_head.weight", "mlm_head.weight",
                 "backbone.layers.3.ffn.vl.fc1.weight", "backbone.layers.0.attn.qkv.shared.weight"):
        assert name in grads, name


def test_hard_negatives_never_pick_the_positive_and_follow_similarity():
    sim = torch.tensor([[5.0, 4.0, -9.0, -9.0], [0.0, 9.0, 8.9, -9.0]]).repeat(200, 1)
    positive = torch.tensor([0, 1]).repeat(200)
    picks = sample_hard_negatives(sim, positive, torch.Generator().manual_seed(0))
    assert not (picks == positive).any()
    assert (picks[0::2] == 1).float().mean() > 0.95     # the hardest negative of row 0 is column 1
    assert (picks[1::2] == 2).float().mean() > 0.95


def test_language_stage_freezes_attention_and_vision_expert():
    model = _model("vlmo_tiny", vlmo=True)
    counts = apply_stage(model, "language")
    assert counts["trainable"] > 0 and counts["frozen"] > 0
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids, padding, targets, _ = _text()
    for _ in range(2):
        opt.zero_grad()
        model.text_mlm(ids, padding, targets, {}).backward()
        opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert "backbone.layers.0.ffn.text.fc1.weight" in changed and "backbone.text_embed.weight" in changed
    assert "mlm_head.weight" in changed
    frozen = [n for n in before if ".attn." in n or ".vision." in n or n.startswith("backbone.patch_embed")]
    assert frozen and not (set(frozen) & changed)
    with pytest.raises(ValueError, match="unknown stage"):
        apply_stage(model, "audio")


def test_export_round_trip_into_backbone(tmp_path):
    model = _model()
    sd = export_state_dict(model)
    assert any(k.startswith("beit3.encoder.layers.0.self_attn.q_proj.A") for k in sd)
    assert sd["mlm_head.weight"].shape == (64, 64) and sd["mim_head.weight"].shape == (32, 64)
    path = tmp_path / "backbone.pth"
    torch.save({"model": sd}, path)
    loaded = build_backbone("beit3_tiny", checkpoint=str(path), vocab_size=64).eval()
    assert set(loaded.load_report.heads) == {"mlm_head.weight", "mlm_head.bias", "mim_head.weight", "mim_head.bias"}
    ids, padding, _, _ = _text()
    image = torch.rand(3, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        a = model.backbone.forward_fused(image, ids, padding).hidden
        b = loaded.forward_fused(image, ids, padding).hidden
    assert torch.allclose(a, b, atol=1e-6)
    # continue pretraining from the export: heads come back too
    fresh = _model()
    fresh.backbone.load_state_dict(loaded.state_dict())
    assert sorted(fresh.load_heads(loaded.load_report.heads)) == sorted(loaded.load_report.heads)
    assert torch.equal(fresh.mlm_head.weight, model.mlm_head.weight)


def test_load_heads_refuses_wrong_vocabulary():
    model = _model()
    with pytest.raises(ValueError, match="vocabulary"):
        model.load_heads({"mlm_head.weight": torch.zeros(100, 64)})


def test_vqkd_loads_a_released_style_checkpoint(tmp_path):
    """A file with the released key layout (decoder, teacher, k_bias, 224-px positions) loads and
    reproduces the source tokenizer's codes."""
    source = build_vqkd("vqkd_tiny", img_size=128)
    torch.manual_seed(3)
    for p in source.parameters():
        p.data.normal_(0, 0.2)
    source.init_codebook(torch.rand(2, 3, 128, 128) * 2 - 1)
    sd = dict(source.state_dict())
    sd["decoder.blocks.0.attn.qkv.weight"] = torch.zeros(3)
    sd["decode_task_layer.0.weight"] = torch.zeros(3)
    sd["teacher_model.visual.proj"] = torch.zeros(3)
    sd["encoder.blocks.0.attn.k_bias"] = torch.zeros(64)
    torch.save({"model": sd}, tmp_path / "vqkd.pth")
    same = build_vqkd("vqkd_tiny", img_size=128, checkpoint=str(tmp_path / "vqkd.pth"))
    assert any("decoder" in n for n in same.load_report.notes)
    image = torch.rand(2, 3, 128, 128) * 2 - 1
    assert torch.equal(same.get_codebook_indices(image), source.get_codebook_indices(image))
    smaller = build_vqkd("vqkd_tiny", img_size=64, checkpoint=str(tmp_path / "vqkd.pth"))  # positions resampled
    assert any("resampled" in n for n in smaller.load_report.notes)
    assert smaller.get_codebook_indices(image[:, :, :64, :64]).shape == (2, 64)
    sd_bad = {k: v for k, v in sd.items() if not k.startswith("quantize.")}
    sd_bad["quantize.embedding.initted"] = torch.zeros(1)
    out, _ = checkpoint_filter_fn({"model": sd_bad}, same)
    assert "quantize.embedding.initted" in out


def test_uninitialised_tokenizer_refuses_to_tokenize():
    tok = build_vqkd("vqkd_tiny")
    with pytest.raises(RuntimeError, match="not initialised"):
        tok.get_codebook_indices(torch.zeros(1, 3, 64, 64))


def test_vqkd_tokenizes_reduced_precision_images_in_its_own_dtype():
    """A bf16-sharded model casts its inputs to bf16; the frozen float32 tokenizer still gives codes."""
    tok = _tokenizer()
    image = torch.rand(2, 3, 64, 64) * 2 - 1
    codes = tok.get_codebook_indices(image.bfloat16())
    assert codes.shape == (2, 64) and codes.dtype == torch.long
    assert (codes == tok.get_codebook_indices(image)).float().mean() > 0.8


def test_mvlm_logs_image_keys_when_no_patch_is_masked():
    """Every rank must log the same keys (fairseq sums them across ranks in one buffer)."""
    model = _model()
    ids, pad, targets, _ = _text()
    image = torch.rand(3, 3, 64, 64) * 2 - 1
    logs = {}
    loss = model.pair_mvlm(image, torch.zeros(3, 64, dtype=torch.bool), ids, pad, targets, logs)
    assert logs["mvlm_image_count"] == 0 and "mvlm_image_loss" in logs and "mvlm_image_correct" in logs
    loss.backward()
    assert model.mim_head.weight.grad is not None and model.mim_head.weight.grad.abs().sum() == 0
