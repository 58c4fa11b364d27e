"""Every pipeline on an NVIDIA GPU gives the CPU pipeline's answers (the loopback-zoo twins of
tests/pipelines/conftest.py), in fp32 and under bf16; captioning's cached decoder on the GPU writes the CPU's captions.

Marked ``cuda`` (skipped without a GPU; ``bench/device_check.sh --dry-run`` runs it on the CPU)."""
import pytest
import torch

from beit3_plugins.pipelines import pipeline

pytestmark = [pytest.mark.cuda]


def _run_everywhere(make, call, devices):
    return [call(make(device)) for device in devices]


@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_every_pipeline_on_the_gpu_matches_the_cpu(world, gpu, dtype):
    images = world["images"]
    devices = ["cpu", gpu]
    kwargs = {} if dtype is None else {"dtype": dtype}
    tol = 1e-4 if dtype is None else 5e-2

    def close(outputs):
        a, b = (torch.as_tensor(o).float().cpu() for o in outputs)
        assert (a - b).abs().max() < tol

    close(_run_everywhere(lambda d: pipeline("image-embedding", model="twin_itc", device=d, **kwargs),
                          lambda p: p(images), devices))
    close(_run_everywhere(lambda d: pipeline("text-embedding", model="twin_itc", device=d, **kwargs),
                          lambda p: p(["a red circle", "two squares"]), devices))
    vqa = _run_everywhere(lambda d: pipeline("vqa", model="twin_vqa", device=d, **kwargs),
                          lambda p: p(images, ["what colour?"] * len(images), top_k=1), devices)
    close([[row[0]["score"] for row in out] for out in vqa])
    nlvr2 = _run_everywhere(lambda d: pipeline("nlvr2", model="twin_nlvr2", device=d, **kwargs),
                            lambda p: p(images, images[::-1], ["both are red"] * len(images)), devices)
    close([[o["score"] for o in out] for out in nlvr2])
    cls = _run_everywhere(lambda d: pipeline("image-classification", model="twin_in1k", class_names=list("abcde"),
                                             device=d, **kwargs), lambda p: p(images[0], top_k=5), devices)
    close([[t["score"] for t in sorted(out, key=lambda t: t["label"])] for out in cls])
    if dtype is None:  # greedy and beam decoding agree token for token in fp32
        captions = _run_everywhere(lambda d: pipeline("captioning", model="twin_captioning", device=d),
                                   lambda p: [c["caption"] for c in p(images, beam_size=2, max_length=5)], devices)
        assert captions[0] == captions[1]
