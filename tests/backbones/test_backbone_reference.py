"""Our Multiway backbone against the official implementation (torchscale's BEiT3) on the same weights."""
import pytest
import torch

from beit3_plugins.backbones import build_backbone, checkpoint_filter_fn, load_pretrained, to_released_state_dict
from beit3_plugins.checkpoint import CheckpointMismatchError
from beit3_plugins.registry import BACKBONES

from torchscale.architecture.config import EncoderConfig  # noqa: E402  (required: installed by setup)
from torchscale.model.BEiT3 import BEiT3  # noqa: E402

TOL = 1e-4


def reference_model(seed=0):
    """torchscale BEiT3 of the beit3_tiny shape, every parameter perturbed so no LayerNorm is trivial."""
    torch.manual_seed(seed)
    cfg = BACKBONES.default_config("beit3_tiny")
    args = EncoderConfig(encoder_embed_dim=cfg.embed_dim, encoder_attention_heads=cfg.num_heads,
                         encoder_ffn_embed_dim=cfg.ffn_dim, encoder_layers=cfg.depth, img_size=cfg.img_size,
                         patch_size=cfg.patch_size, vocab_size=cfg.vocab_size, multiway=True,
                         max_source_positions=cfg.max_text_positions, normalize_output=True,
                         no_output_layer=True, layernorm_embedding=False)
    ref = BEiT3(args).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return ref


@pytest.fixture(scope="module")
def pair():
    ref = reference_model()
    released = {"beit3." + k: v for k, v in ref.state_dict().items()}
    ours = BACKBONES.build("beit3_tiny").eval()
    report = load_pretrained(ours, {"model": released}, strict=True)
    assert not report.missing and not report.unexpected and not report.heads
    assert set(checkpoint_filter_fn({"model": released}, ours)) == set(ours.state_dict())  # timm's contract
    return ref, ours


def inputs(batch=3, text_len=9):
    torch.manual_seed(1)
    image = torch.randn(batch, 3, 64, 64)
    ids = torch.randint(4, 1000, (batch, text_len))
    pad = torch.zeros(batch, text_len, dtype=torch.bool)
    pad[1, 5:] = True
    pad[2, 7:] = True
    return image, ids, pad


def test_vision_only_matches_reference(pair):
    ref, ours = pair
    image, _, _ = inputs()
    with torch.no_grad():
        expected = ref(visual_tokens=image)["encoder_out"]
        got = ours.forward_vision(image).hidden
    assert (expected - got).abs().max() < TOL


def test_vision_with_mim_mask_matches_reference(pair):
    ref, ours = pair
    image, _, _ = inputs()
    masked = torch.rand(3, 64) < 0.4
    with torch.no_grad():
        expected = ref(visual_tokens=image, vision_masked_position=masked)["encoder_out"]
        got = ours.forward_vision(image, masked_positions=masked).hidden
    assert (expected - got).abs().max() < TOL


def test_text_only_matches_reference_on_real_tokens(pair):
    ref, ours = pair
    _, ids, pad = inputs()
    with torch.no_grad():
        expected = ref(textual_tokens=ids, text_padding_position=pad)["encoder_out"]
        got = ours.forward_text(ids, pad).hidden
    keep = ~pad
    assert (expected[keep] - got[keep]).abs().max() < TOL


def test_fused_matches_reference(pair):
    ref, ours = pair
    image, ids, pad = inputs()
    with torch.no_grad():
        expected = ref(textual_tokens=ids, visual_tokens=image, text_padding_position=pad)["encoder_out"]
        out = ours.forward_fused(image, ids, pad)
    keep = torch.cat([torch.ones(3, 65, dtype=torch.bool), ~pad], 1)
    assert out.routing.split == 65
    assert (expected[keep] - out.hidden[keep]).abs().max() < TOL


def test_fused_with_attention_mask_matches_reference(pair):
    """UniLM captioning mask (1 = blocked): image<->image, text->image, causal text->text."""
    ref, ours = pair
    image, ids, _ = inputs()
    n_img, n_txt = 65, ids.shape[1]
    n = n_img + n_txt
    blocked = torch.zeros(n, n)
    blocked[:n_img, n_img:] = 1
    blocked[n_img:, n_img:] = torch.triu(torch.ones(n_txt, n_txt), diagonal=1)
    with torch.no_grad():
        additive = torch.zeros(n, n).masked_fill(blocked.bool(), float("-inf"))  # torchscale adds the mask
        expected = ref(textual_tokens=ids, visual_tokens=image, attn_mask=additive)["encoder_out"]
        got = ours.forward_fused(image, ids, attn_mask=blocked).hidden
    assert (expected - got).abs().max() < TOL


def test_released_layout_round_trip(tmp_path, pair):
    _, ours = pair
    released = to_released_state_dict(ours)
    assert "beit3.encoder.layers.0.self_attn.q_proj.A.weight" in released
    assert released["beit3.encoder.embed_positions.A.weight"].shape == (8 * 8 + 3, 64)
    path = tmp_path / "released.pth"
    torch.save({"model": released}, path)
    again = build_backbone("beit3_tiny", checkpoint=str(path))
    for key, value in ours.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key


def test_checkpoint_at_another_resolution_is_resampled(tmp_path, pair):
    _, ours = pair
    path = tmp_path / "released.pth"
    torch.save({"model": to_released_state_dict(ours)}, path)
    bigger = build_backbone("beit3_tiny", checkpoint=str(path), img_size=96)
    assert bigger.vision_pos_embed.shape == (1, 12 * 12 + 3, 64)
    assert any("resampled" in n for n in bigger.load_report.notes)
    # the first three rows (two unused + [CLS]) are kept as they were
    assert torch.equal(bigger.vision_pos_embed[:, :3], ours.vision_pos_embed[:, :3])


def test_mismatched_checkpoint_is_reported(tmp_path, pair):
    _, ours = pair
    released = to_released_state_dict(ours)
    path = tmp_path / "released.pth"
    torch.save({"model": released}, path)
    with pytest.raises(CheckpointMismatchError, match="wrong shape"):
        build_backbone("beit3_tiny", checkpoint=str(path), ffn_dim=128)
    del released["beit3.encoder.layers.1.ffn.B.fc1.weight"]
    torch.save({"model": released}, path)
    with pytest.raises(CheckpointMismatchError, match="layers.1.ffn.text.fc1.weight"):
        build_backbone("beit3_tiny", checkpoint=str(path))
    with pytest.raises(FileNotFoundError):
        build_backbone("beit3_tiny", checkpoint=str(tmp_path / "nope.pth"))


def test_pickled_code_is_refused(tmp_path):
    import argparse

    path = tmp_path / "old.pth"
    torch.save({"model": {}, "args": argparse.Namespace(x=1)}, path)
    with pytest.raises(CheckpointMismatchError, match="weights-only"):
        build_backbone("beit3_tiny", checkpoint=str(path))
