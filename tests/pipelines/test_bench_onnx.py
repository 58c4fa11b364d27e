"""bench.onnx_runtime runs end to end at tiny size: every graph timed both ways and its outputs compared
(timings are not asserted: speed is measured by the benchmark, never by a test)."""
import pytest

pytest.importorskip("onnxruntime", reason="pip install 'beit3-plugins[onnx]'")

from bench import onnx_runtime  # noqa: E402


def test_onnx_bench_smoke(tmp_path):
    assert onnx_runtime.main(["--smoke", "--repeats", "1", "--out", str(tmp_path / "t.md")]) == 0
    text = (tmp_path / "t.md").read_text()
    rows = [line for line in text.splitlines() if "| beit3_tiny |" in line]
    assert len(rows) == 6   # (image tower, text tower, vqa) x batch (1, 8)
    assert all(float(row.split("|")[-2]) < 1e-4 for row in rows)   # max |diff| column
