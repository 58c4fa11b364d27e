"""The two attention kernels (torch's fused SDPA and bmm + softmax + bmm) give the same results for every mask
the backbone builds, and ``auto``: fixed rules for training and fp32, the kernel measured faster per shape class
for reduced-precision inference."""
import pytest
import torch

from beit3_plugins.backbones import attention
from beit3_plugins.backbones.attention import MATMUL_MAX_SCORES, AttentionKernel, attend, resolve_kernel
from beit3_plugins.registry import BACKBONES

B, H, LQ, LK, D = 3, 2, 5, 7, 8


def masks():
    gen = torch.Generator().manual_seed(3)
    padding = torch.ones(B, 1, 1, LK, dtype=torch.bool)
    padding[1, ..., 4:] = False
    per_query = torch.rand(B, 1, LQ, LK, generator=gen) > 0.4
    per_query[..., 0] = True
    dead_row = per_query.clone()
    dead_row[2, 0, 3] = False                       # one query that may see no key at all
    bias = torch.randn(B, H, LQ, LK, generator=gen).masked_fill(~dead_row, float("-inf"))
    return {"none": None, "padding": padding, "per-query": per_query, "dead row": dead_row,
            "float bias with -inf": bias}


@pytest.mark.parametrize("mask_name", list(masks()))
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_matmul_kernel_equals_sdpa_forward_and_backward(mask_name, dtype, tol):
    mask = masks()[mask_name]
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, n, D, generator=gen).to(dtype).requires_grad_() for n in (LQ, LK, LK))
    grad = torch.randn(B, H, LQ, D, generator=gen).to(dtype)
    results = {}
    for kernel in (AttentionKernel.SDPA, AttentionKernel.MATMUL):
        out = attend(q, k, v, mask, kernel)
        results[kernel] = [out.detach().float()] + [g.float() for g in torch.autograd.grad(out, (q, k, v), grad)]
    for got, expected in zip(results[AttentionKernel.MATMUL], results[AttentionKernel.SDPA]):
        assert torch.isfinite(got).all()
        assert (got - expected).abs().max() <= tol * max(1.0, float(expected.abs().max()))
    if mask_name == "dead row":  # a query that sees nothing gets zeros, as SDPA gives
        assert results[AttentionKernel.MATMUL][0][2, :, 3].abs().max() == 0


@pytest.fixture
def fresh_choices():
    attention.clear_kernel_choices()
    yield
    attention.clear_kernel_choices()


def _slowed(monkeypatch, kernel, seconds=0.05):
    """Make one kernel slower on a fake clock that only the kernels advance (a stand-in for a CPU family where
    it loses; deterministic on a loaded machine): the slowed one costs ``seconds`` per call, the other 1 ms."""
    clock = [0.0]
    monkeypatch.setattr(attention.time, "perf_counter", lambda: clock[0])
    for each in (AttentionKernel.SDPA, AttentionKernel.MATMUL):
        real = attention._RUN[each]
        cost = seconds if each == kernel else 0.001

        def timed(*args, _real=real, _cost=cost):
            clock[0] += _cost
            return _real(*args)

        monkeypatch.setitem(attention._RUN, each, timed)


@pytest.mark.parametrize("slow,expected", [(AttentionKernel.MATMUL, AttentionKernel.SDPA),
                                           (AttentionKernel.SDPA, AttentionKernel.MATMUL)])
def test_auto_picks_the_measured_faster_kernel(monkeypatch, fresh_choices, slow, expected):
    _slowed(monkeypatch, slow)
    q = torch.randn(1, 2, 20, 8, dtype=torch.bfloat16)
    assert resolve_kernel(q, q) == expected
    (key, (picked, sdpa_s, matmul_s)), = attention.kernel_choices().items()
    assert key == ("infer", "bfloat16", "cpu", 8, attention._log2_bucket(400), 1) and picked == expected.value
    assert (sdpa_s > matmul_s) == (slow == AttentionKernel.SDPA)


def test_choice_is_measured_once_per_grad_mode_and_shape_class(monkeypatch, fresh_choices):
    """A repeated class reuses the measurement, a new length bucket measures again; with ``measured`` training
    and fp32 are measured too, as classes of their own (the Xeon AMX case: fused wins forward, matmul fwd+bwd)."""
    calls = []
    monkeypatch.setattr(attention, "_measure", lambda q, k, v, mask, training: calls.append(training) or
                        ((1.0, 2.0) if not training else (2.0, 1.0)))
    q = torch.randn(2, 2, 30, 8, dtype=torch.bfloat16)
    assert resolve_kernel(q, q) == AttentionKernel.SDPA
    assert resolve_kernel(q + 1, q) == AttentionKernel.SDPA
    longer = torch.randn(2, 2, 120, 8, dtype=torch.bfloat16)
    resolve_kernel(longer, longer)
    assert calls == [False, False]
    grad_q = q.clone().requires_grad_()
    assert resolve_kernel(grad_q, q, "measured") == AttentionKernel.MATMUL
    with torch.no_grad():
        assert resolve_kernel(grad_q, q, "measured") == AttentionKernel.SDPA   # inference class, already measured
    assert resolve_kernel(q.float(), q.float(), "measured") == AttentionKernel.SDPA
    assert calls == [False, False, True, False]
    monkeypatch.setattr(attention, "_measure", lambda *a: (1.0, 0.95))   # matmul 5% faster: within the margin
    attention.clear_kernel_choices()
    assert resolve_kernel(grad_q, grad_q, "measured") == AttentionKernel.SDPA
    assert resolve_kernel(grad_q.detach(), grad_q.detach(), "measured") == AttentionKernel.MATMUL


def test_auto_training_and_fp32_follow_fixed_rules_never_a_measurement(monkeypatch, fresh_choices):
    """Under ``auto`` what a training run computes must not depend on machine load (a resumed run must redo the
    original's arithmetic): bf16 training is the matmul path, fp32 the fused kernel, whatever a timing would
    say; large shapes are the fused kernel in every mode; an explicit choice is kept."""
    monkeypatch.setattr(attention, "_measure", lambda *a: pytest.fail("must not measure"))
    grad_q = torch.randn(1, 1, 16, 8, dtype=torch.bfloat16).requires_grad_()
    assert resolve_kernel(grad_q, grad_q) == AttentionKernel.MATMUL
    fp32 = torch.randn(1, 1, 16, 8)
    assert resolve_kernel(fp32, fp32) == AttentionKernel.SDPA
    assert resolve_kernel(fp32.requires_grad_(), fp32) == AttentionKernel.SDPA
    side = int(MATMUL_MAX_SCORES ** 0.5) + 1
    large = torch.zeros(1, 1, side, 64, dtype=torch.bfloat16)
    assert resolve_kernel(large, large) == AttentionKernel.SDPA
    assert resolve_kernel(large.requires_grad_(), large) == AttentionKernel.SDPA
    assert resolve_kernel(large, large, "measured") == AttentionKernel.SDPA
    small = torch.zeros(1, 1, 229, 64)
    assert resolve_kernel(small, small, "matmul") == AttentionKernel.MATMUL   # an explicit choice is kept
    assert resolve_kernel(small.bfloat16(), small.bfloat16(), "sdpa") == AttentionKernel.SDPA
    assert attention.kernel_choices() == {}


def test_unknown_kernel_names_list_the_choices():
    with pytest.raises(ValueError, match="auto.*sdpa.*matmul"):
        AttentionKernel("flash")
    with pytest.raises(ValueError, match="auto.*sdpa.*matmul"):
        BACKBONES.build("beit3_tiny", attention_kernel="flash")


def _count_sdpa_calls(monkeypatch):
    calls = []
    real = attention.F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", counting)
    return calls


def test_model_forward_follows_the_measured_choice(monkeypatch, fresh_choices):
    """Inside the backbone under bf16 autocast, every attention call runs the kernel measured faster; in fp32
    nothing is measured and every call is the fused kernel."""
    model = BACKBONES.build("beit3_tiny").eval()
    image, ids = torch.randn(2, 3, 64, 64), torch.randint(4, 1000, (2, 6))
    for slow, autocast in ((AttentionKernel.MATMUL, True), (AttentionKernel.SDPA, True), (AttentionKernel.SDPA, False)):
        attention.clear_kernel_choices()
        monkeypatch.undo()
        _slowed(monkeypatch, slow, 0.005)
        with torch.no_grad():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                model.forward_fused(image, ids)
        calls = _count_sdpa_calls(monkeypatch)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            model.forward_fused(image, ids)
        picked = {choice for choice, _, _ in attention.kernel_choices().values()}
        runs_sdpa = slow == AttentionKernel.MATMUL or not autocast
        assert picked == (set() if not autocast else {"sdpa" if runs_sdpa else "matmul"})
        assert len(calls) == (2 * model.cfg.depth if runs_sdpa else 0)


@pytest.mark.parametrize("name", ["beit3_tiny", "vlmo_tiny"])
def test_models_agree_across_kernels_in_every_mode(name):
    """Same weights, kernel forced either way: fused input with padding, text with a causal mask, and a cached
    decoding step (one query), in fp32 (tight) and under bf16 autocast, with gradients."""
    torch.manual_seed(0)
    models = {k: BACKBONES.build(name, attention_kernel=k.value)
              for k in (AttentionKernel.SDPA, AttentionKernel.MATMUL)}
    models[AttentionKernel.MATMUL].load_state_dict(models[AttentionKernel.SDPA].state_dict())
    image, ids = torch.randn(2, 3, 64, 64), torch.randint(4, 1000, (2, 6))
    padding = torch.zeros(2, 6, dtype=torch.bool)
    padding[1, 4:] = True
    causal = torch.triu(torch.ones(6, 6, dtype=torch.bool), 1)
    for autocast, tol in ((False, 1e-5), (True, 5e-2)):
        outs = {}
        for kernel, model in models.items():
            model.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                fused = model.forward_fused(image, ids, padding_mask=padding, use_cache=True)
                text = model.forward_text(ids, attn_mask=causal).hidden
                step = model.forward_text_step(ids[:, :1], fused.past_kv, position_start=6,
                                               past_padding_mask=fused.padding_mask).hidden
            (fused.hidden.float().pow(2).mean() + text.float().pow(2).mean()).backward()
            grad = model.patch_embed.weight.grad
            outs[kernel] = [fused.hidden.detach().float(), text.detach().float(), step.detach().float(), grad]
        for got, expected in zip(outs[AttentionKernel.MATMUL], outs[AttentionKernel.SDPA]):
            assert (got - expected).abs().max() <= tol * max(1.0, float(expected.abs().max())), autocast
