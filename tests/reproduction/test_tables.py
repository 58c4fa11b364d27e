"""The published tables as data, the plan of a run, and the pieces of sharded evaluation (fast checks)."""
import json

import pytest
import torch

from beit3_plugins.reproduction import BENCHMARKS, TABLES
from beit3_plugins.reproduction.runner import Cell, Plan, plan
from beit3_plugins.reproduction.tables import GIANT
from beit3_plugins.vl_tasks.engine.loop import shard_indices
from beit3_plugins.vl_tasks.metrics import recall_at_k, recall_at_k_chunked, top_k_accuracy
from beit3_plugins.zoo import get_pretrained, list_pretrained


def test_every_number_names_a_benchmark_metric_source_and_an_existing_file():
    for table in TABLES.values():
        assert table.rows, table.name
        for r in table.rows:
            bench = BENCHMARKS[r.benchmark]
            assert r.metric in bench.metrics, r
            assert r.source, r
            if r.model != GIANT:
                entry = get_pretrained(r.model)
                assert entry.task in bench.zoo_tasks, r
            else:
                assert "not released" in r.note, r


def test_the_release_table_covers_every_released_finetuned_beit3_file():
    finetuned = {n for n in list_pretrained(family="beit3") if "_itc_" not in n   # _itc_: contrastive pretraining
                 and get_pretrained(n).task in ("image_classification", "vqa", "nlvr2", "captioning", "retrieval")}
    assert finetuned == set(TABLES["beit3_release"].models())
    vlmo = {n for n in list_pretrained(family="vlmo") if get_pretrained(n).task in ("vqa", "nlvr2", "retrieval")}
    assert vlmo == set(TABLES["vlmo_release"].models())


def test_release_numbers_as_the_readme_states_them():
    rows = {(r.model, r.benchmark, r.metric): r for r in TABLES["beit3_release"].rows}
    assert rows["beit3_large_patch16_224_in1k", "imagenet1k_val", "accuracy_top5"].value == 98.3
    r = rows["beit3_base_patch16_384_coco_retrieval", "coco_retrieval_test", "t2i_r1"]
    assert (r.value, r.source.endswith("line 138 (IR@1)")) == (61.4, True)
    assert rows["beit3_large_indomain_patch16_768_vgqaaug_vqa", "vqav2_test_std", "vqa_accuracy"].value == 83.03


def test_vqa_val_is_never_beside_a_reported_number():
    for table in TABLES.values():
        for r in table.rows:
            if r.benchmark == "vqav2_val":
                assert r.value is None and "contaminated" in r.note
    assert not BENCHMARKS["vqav2_test_dev"].local and "eval.ai" in BENCHMARKS["vqav2_test_dev"].server


def test_plan_substitutes_by_glob_and_benchmark_and_adds_rows_for_a_new_model():
    p = plan("beit3_paper_table2", ["mine.pth=beit3_giant@nlvr2_*"])
    cells = {r.benchmark: c for _, r, c in p.rows}
    assert cells["nlvr2_dev"] == Cell("mine.pth", "nlvr2_dev") and cells["vqav2_test_dev"] is None
    p = plan("beit3_release", [])
    assert all(c is not None and c.model == r.model for _, r, c in p.rows)
    p = plan("beit3_release", ["beit3_base_patch16_224_nlvr2"])
    assert {c.benchmark for c in p.cells()} == {"nlvr2_dev", "nlvr2_test_p"}
    p = plan("nlvr2_dev", ["vlmo_base_plus_patch16_384_nlvr2"])  # a benchmark as target; a model without a row
    assert [(r.model, r.value) for _, r, c in p.rows if c is not None] == [("vlmo_base_plus_patch16_384_nlvr2", None)]
    assert Plan.from_json(json.loads(json.dumps(p.to_json()))).rows == p.rows
    with pytest.raises(KeyError, match="unknown table or benchmark"):
        plan("beit3_relase")


@pytest.mark.parametrize("n,bs,world", [(10, 4, 2), (3, 4, 2), (17, 2, 3), (0, 4, 2), (64, 4, 2)])
def test_shards_are_whole_batches_in_rank_order_covering_the_split(n, bs, world):
    shards = [shard_indices(n, bs, world, r) for r in range(world)]
    assert [i for s in shards for i in s] == list(range(n))
    for s in shards[:-1]:
        assert len(s) % bs == 0 or s.stop == n


def test_chunked_recall_equals_the_full_matrix_and_top_k_accuracy():
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(7, 8, generator=g), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(21, 8, generator=g), dim=-1)
    txt[5] = txt[4]                                        # a tie
    t2i = [i // 3 for i in range(21)]
    expected = recall_at_k(img @ txt.T, t2i)
    for chunk in (1, 4, 1024):
        assert recall_at_k_chunked(img, txt, t2i, chunk=chunk) == pytest.approx(expected)
    assert top_k_accuracy([[2, 0, 1], [1, 2, 0]], [0, 0], k=2) == {"accuracy_top2": 50.0}


def test_cells_decode_images_as_the_official_loader(tmp_path, monkeypatch):
    """The harness evaluates with ``task.image_decode=official``: images decoded as microsoft/unilm
    beit3/datasets.py's loader does (torchvision default_loader: PIL convert("RGB"), no EXIF)."""
    from beit3_plugins.reproduction.runner import RunConfig, cell_overrides
    from beit3_plugins.zoo import CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "beit3.spm").write_bytes(b"stand-in: only its path is passed on")
    weights = tmp_path / "nlvr2.pth"
    weights.write_bytes(b"")
    name = next(b for b in BENCHMARKS.names() if BENCHMARKS[b].task == "nlvr2")
    cell = Cell(model=str(weights), benchmark=name, like="beit3_base_patch16_224_nlvr2")
    out = cell_overrides(cell, BENCHMARKS[name], RunConfig(data_root=tmp_path, out=tmp_path), tmp_path / "w")
    assert "++task.image_decode=official" in out and "train.eval_only=true" in out


def test_benchmarks_are_a_registry_that_names_the_known_ones():
    from beit3_plugins.reproduction import get_benchmark
    from beit3_plugins.reproduction.benchmarks import ENTRIES

    assert BENCHMARKS.names() == sorted(b.name for b in ENTRIES)
    assert get_benchmark("nlvr2_dev").task == "nlvr2"
    with pytest.raises(KeyError, match="Did you mean 'nlvr2_dev'"):
        get_benchmark("nlvr_dev")
