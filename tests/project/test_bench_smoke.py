"""The benchmark suite in its reduced CI form: tiny sizes, two repeats, asserting only that every
implementation's outputs match (timings are not checked: speed is measured by ``bench/``, not by tests)."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # `bench` is a folder of scripts at the repository root, not installed

from bench.common import bf16_supported  # noqa: E402
from bench.retrieval import chunked_recall_at_k  # noqa: E402
from bench.settings import MismatchError, check  # noqa: E402


def test_smoke_run_writes_a_report_with_matching_outputs(tmp_path):
    out = tmp_path / "REPORT.md"
    res = subprocess.run([sys.executable, "-m", "bench.run_all", "--smoke", "--out", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]  # any output mismatch raises MismatchError -> exit 1
    report = out.read_text()
    cases = ["vision-only inference", "text-only inference", "fused inference", "fused forward+backward",
             "Caption generation", "activation checkpointing", "retrieval", "Attention kernels", "Allocator",
             "Inference pipeline overhead"]
    if bf16_supported():  # the kernel-choice row is a bf16 training step: only on CPUs with native bf16
        cases.append("forced onto SDPA")
    for case in cases:
        assert case in report, case
    assert "| ours | on |" in report and "| 256 | full |" in report and "## Targets" in report
    assert out.with_suffix(".json").exists()


def test_reproduction_harness_bench_smoke(tmp_path):
    """``bench.reproduction`` runs (harness against the bare loop, whose recalls it checks equal; the chunked
    scoring of a retrieval split in a fresh process) and writes its table; the numbers mean nothing at this size."""
    out = tmp_path / "reproduction.md"
    res = subprocess.run([sys.executable, "-m", "bench.reproduction", "--smoke", "--out", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    text = out.read_text()
    assert "| bare loop | harness | overhead |" in text and "400 images x 2000 captions" in text, text
    assert "peak RSS above the embeddings" in text


def test_mismatch_is_an_error():
    assert check("x", 1e-6, 1e-4) == 1e-6
    with pytest.raises(MismatchError, match="differ"):
        check("x", 1e-2, 1e-4)
    with pytest.raises(MismatchError):
        check("x", float("nan"), 1e-4)


def test_chunked_retrieval_equals_the_full_evaluation_with_ties():
    from beit3_plugins.vl_tasks.metrics import recall_at_k

    torch.manual_seed(0)
    images = torch.randn(37, 8, dtype=torch.float64)
    texts = torch.randn(5 * 37, 8, dtype=torch.float64)
    t2i = torch.arange(37).repeat_interleave(5)[torch.randperm(5 * 37)]
    texts = texts + 2 * images[t2i]      # matching pairs score higher: recalls well above chance
    texts[:10] = texts[10:20]            # exact ties between texts
    images[3] = images[4]                # and between images
    expected = recall_at_k(images @ texts.T, t2i.tolist())
    for chunk in (1, 7, 1000):
        assert chunked_recall_at_k(images, texts, t2i.tolist(), chunk=chunk) == pytest.approx(expected)
    assert expected["t2i_r1"] > 50
