"""bench.pipelines runs end to end at tiny size and reports both columns for each pipeline (timings are not
asserted: speed is measured by the benchmark, never by a test)."""
from bench import pipelines
import pytest

pytestmark = [pytest.mark.slow]


def test_pipeline_bench_smoke(tmp_path):
    rows = pipelines.measure(smoke=True, repeats=1)
    assert [r.task for r in rows] == ["image-embedding", "vqa"]
    assert all(r.raw > 0 and r.pipeline > 0 and r.preparation > 0 for r in rows)
    assert pipelines.main(["--smoke", "--repeats", "1", "--out", str(tmp_path / "t.md")]) == 0
    text = (tmp_path / "t.md").read_text()
    assert text.count("| beit3_tiny | 8 |") == 2 and "input preparation alone" in text
