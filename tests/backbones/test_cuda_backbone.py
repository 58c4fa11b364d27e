"""The backbone on an NVIDIA GPU: reduced precision against fp32, every SDPA kernel against the matmul path with
padding and UniLM masks, the key/value cache against recompute, FSDP2 on one GPU, and a compiled block.

Marked ``cuda``: skipped on machines without a GPU; ``bench/device_check.sh --dry-run`` runs them on the CPU
(``BEIT3_CUDA_TESTS_ON_CPU=1``) with tiny sizes, so the same code is exercised here before a device session.
On the GPU the sizes are BEiT-3 base at 224 px with 32 text tokens.
"""
import os

import pytest
import torch

from beit3_plugins.backbones import Routing, unilm_attention_mask
from beit3_plugins.backbones.attention import AttentionKernel, attend
from beit3_plugins.backbones.multiway import build_attention_mask
from beit3_plugins.registry import BACKBONES

pytestmark = [pytest.mark.cuda]

# max |reduced - fp32| / std(fp32) of the output (LayerNorm-ed, O(1) values) and of a weight gradient; the
# bf16 bound is the one bench/ applies to bf16 autocast (8 mantissa bits over 12 layers)
RELATIVE_BOUND = {"bf16": {"out": 0.1, "grad": 0.2}, "fp16": {"out": 0.02, "grad": 0.05}}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _sizes(device):
    if device.type == "cuda":
        return dict(name="beit3_base", img=224, text=32, batch=4)
    return dict(name="beit3_tiny", img=64, text=8, batch=2)


def _model(device, **overrides):
    s = _sizes(device)
    torch.manual_seed(0)
    model = BACKBONES.build(s["name"], img_size=s["img"], **overrides)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.to(device), s


def _inputs(device, s, vocab):
    g = torch.Generator().manual_seed(1)
    image = torch.randn(s["batch"], 3, s["img"], s["img"], generator=g).to(device)
    ids = torch.randint(4, min(vocab, 1000), (s["batch"], s["text"]), generator=g).to(device)
    padding = torch.zeros(s["batch"], s["text"], dtype=torch.bool)
    padding[0, -3:] = True  # one padded caption
    return image, ids, padding.to(device)


def _relative(got, ref):
    return float((got.float() - ref.float()).abs().max() / ref.float().std())


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_reduced_precision_forward_backward_against_fp32(gpu, dtype):
    if dtype == "bf16" and gpu.type == "cuda" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    model, s = _model(gpu)
    image, ids, padding = _inputs(gpu, s, model.cfg.vocab_size)

    def step(autocast_dtype):
        model.zero_grad(set_to_none=True)
        with torch.autocast(gpu.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out = model.forward_fused(image, ids, padding_mask=padding).hidden
        out.float().pow(2).mean().backward()
        return out.detach().float(), model.patch_embed.weight.grad.detach().clone()

    ref_out, ref_grad = step(None)
    out, grad = step(DTYPES[dtype])
    assert torch.isfinite(out).all() and torch.isfinite(grad).all()
    assert _relative(out, ref_out) < RELATIVE_BOUND[dtype]["out"]
    assert _relative(grad, ref_grad) < RELATIVE_BOUND[dtype]["grad"]


def _sdpa_backends(device, masked):
    from torch.nn.attention import SDPBackend

    if device.type != "cuda":
        return [SDPBackend.MATH]
    backends = [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH, SDPBackend.CUDNN_ATTENTION]
    return backends if masked else [SDPBackend.FLASH_ATTENTION] + backends


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("masks", ["none", "padding", "unilm", "padding+unilm"])
def test_every_sdpa_kernel_equals_the_matmul_path(gpu, dtype, masks):
    """Each fused kernel torch may pick (flash only without a mask) gives the matmul path's result, with our
    padding masks and the captioning (UniLM) mask, including rows that may attend to nothing."""
    from torch.nn.attention import sdpa_kernel

    if gpu.type != "cuda" and dtype == torch.float16:
        pytest.skip("fp16 attention on the CPU is not a path anyone runs")
    g = torch.Generator().manual_seed(0)
    batch, heads, n_img, n_txt, head_dim = 2, 4, 17, 9, 64
    n = n_img + n_txt
    q, k, v = (torch.randn(batch, heads, n, head_dim, generator=g).to(gpu, dtype) for _ in range(3))
    padding = torch.zeros(batch, n, dtype=torch.bool)
    padding[1, -4:] = True
    mask = build_attention_mask(padding.to(gpu) if "padding" in masks else None,
                                unilm_attention_mask(n_img, n_txt, device=gpu) if "unilm" in masks else None)
    expected = attend(q, k, v, mask, AttentionKernel.MATMUL).float()
    tol = {torch.float32: 2e-5, torch.bfloat16: 3e-2, torch.float16: 4e-3}[dtype]
    for backend in _sdpa_backends(gpu, mask is not None):
        try:
            with sdpa_kernel([backend]):
                got = attend(q, k, v, mask, AttentionKernel.SDPA).float()
        except RuntimeError as err:  # this kernel does not take these inputs on this GPU (dtype, mask)
            if "No available kernel" in str(err):
                continue
            raise
        assert (got - expected).abs().max() < tol, backend


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_model_under_sdpa_and_matmul_kernels_agrees(gpu, dtype):
    """The whole fused forward with padding and the UniLM mask, under each attention kernel setting."""
    outs = {}
    for kernel in ("sdpa", "matmul"):
        model, s = _model(gpu, attention_kernel=kernel)
        model.eval()
        image, ids, padding = _inputs(gpu, s, model.cfg.vocab_size)
        n_img = 1 + (s["img"] // model.cfg.patch_size) ** 2
        with torch.no_grad(), torch.autocast(gpu.type, dtype=dtype, enabled=dtype != torch.float32):
            outs[kernel] = model.forward_fused(image, ids, padding_mask=padding,
                                               attn_mask=unilm_attention_mask(n_img, s["text"], gpu)).hidden
    bound = 1e-4 if dtype == torch.float32 else 0.05
    assert _relative(outs["sdpa"], outs["matmul"]) < bound


@pytest.mark.parametrize("name", ["beit3_tiny", "vlmo_tiny"])
def test_kv_cache_decoding_equals_recompute(gpu, name):
    torch.manual_seed(0)
    model = BACKBONES.build(name).eval().to(gpu)
    image = torch.randn(2, 3, 64, 64, device=gpu)
    ids = torch.randint(4, 1000, (2, 7), device=gpu)
    n_img, n_txt = 1 + 8 * 8, ids.shape[1]
    with torch.no_grad():
        full = model.forward_fused(image, ids, attn_mask=unilm_attention_mask(n_img, n_txt, gpu)).hidden
        first = model.forward_fused(image, ids[:, :1], attn_mask=unilm_attention_mask(n_img, 1, gpu),
                                    use_cache=True)
        states, past = [first.hidden], first.past_kv
        for t in range(1, n_txt):
            out = model.forward_text_step(ids[:, t:t + 1], past, position_start=t)
            states.append(out.hidden)
            past = out.past_kv
    steps = torch.cat(states, 1)
    assert (steps - full).abs().max() < 1e-4


def test_fsdp2_on_one_device_trains_like_the_plain_model(gpu, tmp_path):
    """The sharded path (pretraining's shard_model: one FSDP2 unit per layer) on a one-rank group gives the
    plain model's loss and gradients."""
    import torch.distributed as dist

    from beit3_plugins.pretraining.fairseq_plugin.sharding import shard_model

    backend = "nccl" if gpu.type == "cuda" else "gloo"
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29641")
    dist.init_process_group(backend, rank=0, world_size=1, init_method=f"file://{tmp_path / 'rdzv'}")
    try:
        plain, s = _model(gpu)
        sharded, _ = _model(gpu)
        shard_model(sharded, list(sharded.layers), device_type=gpu.type)
        image, ids, padding = _inputs(gpu, s, plain.cfg.vocab_size)
        losses = []
        for model in (plain, sharded):  # the root's forward: FSDP2 gathers parameters in its hooks
            loss = model(image, ids, padding_mask=padding).hidden.float().pow(2).mean()
            loss.backward()
            losses.append(float(loss))
        assert abs(losses[0] - losses[1]) < 1e-5 * max(1.0, abs(losses[0]))
        grad = sharded.patch_embed.weight.grad
        grad = grad.full_tensor() if hasattr(grad, "full_tensor") else grad
        torch.testing.assert_close(grad, plain.patch_embed.weight.grad, rtol=1e-4, atol=1e-6)
    finally:
        dist.destroy_process_group()
