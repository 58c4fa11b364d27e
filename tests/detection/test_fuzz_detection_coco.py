"""Fuzzing (hypothesis, ``derandomize=True``) of the detection plugin's COCO annotation path as a run uses it:
``register_coco_datasets`` then detectron2's ``DatasetCatalog.get`` (our check, then detectron2's
``load_coco_json``), then detectron2's ``annotations_to_instances`` (what ``DatasetMapper`` builds targets with).

* the bytes of a valid instances json damaged (truncated, bytes inserted / overwritten: NUL, 0xff, lone
  UTF-8 lead bytes, brackets): invalid json and invalid UTF-8;
* one field of an image / annotation / category replaced by another JSON value or deleted, and annotation
  boxes / polygons / RLE replaced by bad ones (NaN, inf, negative, odd counts, wrong types).

Property: a ``CocoAnnotationError`` naming the file, or records whose every annotation detectron2 turns into
finite boxes and masks, with kept + skipped (counted by reason) = the file's annotation count. ``CASES``
examples per family; the outcomes are counted and both kinds must occur.
"""
import json
import math
from collections import Counter
from itertools import count

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("detectron2")

from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data.datasets import load_coco_json  # noqa: E402
from detectron2.data.detection_utils import annotations_to_instances  # noqa: E402

import beit3_plugins.detection as det  # noqa: E402
from beit3_plugins.detection.coco_checks import CocoAnnotationError, check_coco_json  # noqa: E402

CASES = 80
FUZZ = settings(max_examples=CASES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
NAMES = count()
OUTCOMES = Counter()

leaves = st.one_of(st.none(), st.booleans(), st.integers(-5, 300), st.floats(), st.text(max_size=6))
json_values = st.recursive(leaves, lambda inner: st.one_of(st.lists(inner, max_size=8),
                                                           st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                           max_leaves=10)
BAD_BYTES = st.sampled_from([b"\x00", b"\xff", b"\xc3", b"\xed\xa0\x80", b"{", b"]", b'"'])
numbers = st.one_of(st.floats(), st.integers(-50, 200))
bad_boxes = st.one_of(st.lists(numbers, min_size=0, max_size=6), st.just([1.0, 2.0, float("nan"), 4.0]),
                      st.just([-3.0, 2.0, 5.0, 5.0]), st.just([1.0, 2.0, -5.0, 5.0]), json_values)
bad_segmentations = st.one_of(
    st.lists(st.lists(numbers, max_size=9), max_size=3),
    st.fixed_dictionaries({"size": st.one_of(st.just([128, 128]), json_values),
                           "counts": st.one_of(st.text(max_size=8), st.lists(st.integers(-3, 20000), max_size=4),
                                               json_values)}),
    st.just([[1.0, 2.0, 3.0, float("inf"), 5.0, 6.0]]), st.just([[1, 2, 3, 4, 5]]), json_values)


@pytest.fixture(scope="module")
def small_coco(data_world):
    """The data world's train json cut to 3 images and their annotations, and its image root."""
    _, manifest = data_world
    data = json.loads(manifest.path("instances_train").read_text())
    images = data["images"][:3]
    ids = {im["id"] for im in images}
    data = {**data, "images": images, "annotations": [a for a in data["annotations"] if a["image_id"] in ids]}
    return data, str(manifest.path("det_images_train"))


def _load_through_the_catalog(path, image_root):
    """(records, skipped) via the real registration, or None for a CocoAnnotationError naming ``path``."""
    name = f"fuzz_coco_{next(NAMES)}"
    det.register_coco_datasets([[name, str(path), image_root]])
    try:
        records = DatasetCatalog.get(name)
        skipped = dict(MetadataCatalog.get(name).skipped_annotations)
    except CocoAnnotationError as exc:
        assert str(path) in str(exc), repr(exc)
        OUTCOMES["clear error"] += 1
        return None
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    for record in records:
        instances = annotations_to_instances(record["annotations"], (record["height"], record["width"]),
                                             mask_format="bitmask")
        assert bool(instances.gt_boxes.tensor.isfinite().all())
        if record["annotations"] and "segmentation" in record["annotations"][0]:
            assert instances.gt_masks.tensor.shape[1:] == (record["height"], record["width"])
    OUTCOMES["loaded, skipped counted" if skipped else "loaded"] += 1
    return records, skipped


def _check_counts(path, outcome):
    if outcome is None:
        return
    records, skipped = outcome
    with open(path, "rb") as handle:
        total = len(json.loads(handle.read().decode("utf-8"))["annotations"])
    assert sum(len(r["annotations"]) for r in records) + sum(skipped.values()) == total


@st.composite
def damaged(draw, data: bytes):
    kind = draw(st.sampled_from(["truncate", "insert", "overwrite"]))
    pos = draw(st.integers(0, len(data) - 1))
    if kind == "truncate":
        return data[:pos]
    patch = draw(st.one_of(BAD_BYTES, st.binary(min_size=1, max_size=6)))
    return data[:pos] + patch + data[pos + (len(patch) if kind == "overwrite" else 0):]


@FUZZ
@given(data=st.data())
def test_damaged_bytes_are_a_clear_error_or_a_counted_load(small_coco, tmp_path, data):
    doc, image_root = small_coco
    path = tmp_path / "instances.json"
    path.write_bytes(data.draw(damaged(json.dumps(doc).encode())))
    _check_counts(path, _load_through_the_catalog(path, image_root))


@FUZZ
@given(data=st.data())
def test_bad_fields_are_a_clear_error_or_a_counted_skip(small_coco, tmp_path, data):
    doc, image_root = small_coco
    doc = json.loads(json.dumps(doc))
    section = data.draw(st.sampled_from(["annotations", "annotations", "annotations", "images", "categories"]))
    entry = doc[section][data.draw(st.integers(0, len(doc[section]) - 1))]
    key = data.draw(st.sampled_from(sorted(entry) + ["bbox", "segmentation"] * (section == "annotations")))
    if data.draw(st.booleans()):
        entry.pop(key, None)
    elif key == "bbox":
        entry[key] = data.draw(bad_boxes)
    elif key == "segmentation":
        entry[key] = data.draw(bad_segmentations)
    else:
        entry[key] = data.draw(json_values)
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(doc))  # NaN / Infinity literals: Python's json (and pycocotools') read them
    _check_counts(path, _load_through_the_catalog(path, image_root))


def test_outcomes_of_the_fuzzing_cover_both_kinds():
    """Runs after the two fuzz tests (file order): each kind of outcome occurred (case counts printed)."""
    print("COCO fuzz outcomes:", dict(OUTCOMES))
    if not OUTCOMES:
        pytest.skip("run with the fuzz tests of this file")
    assert OUTCOMES["clear error"] > 0 and OUTCOMES["loaded, skipped counted"] > 0, OUTCOMES


def test_the_first_probe_cases(small_coco, tmp_path):
    """Named cases and the detectron2 behaviour each replaces (measured with detectron2's load_coco_json alone:
    JSONDecodeError and UnicodeDecodeError without the path, IndexError for a file without 'images', a NaN
    box loaded silently)."""
    doc, image_root = small_coco
    path = tmp_path / "case.json"
    text = json.dumps(doc)
    path.write_text(text[: len(text) // 2])
    with pytest.raises(CocoAnnotationError, match="not valid json.*truncated"):
        check_coco_json(path)
    path.write_bytes(text.encode()[:40] + b"\xff" + text.encode()[40:])
    with pytest.raises(CocoAnnotationError, match="not UTF-8"):
        check_coco_json(path)
    path.write_text(json.dumps({k: v for k, v in doc.items() if k != "images"}))
    with pytest.raises(CocoAnnotationError, match=r"'images' is missing"):
        check_coco_json(path)
    broken = json.loads(text)
    broken["annotations"][0]["bbox"][2] = float("nan")
    broken["annotations"][1]["segmentation"] = [[1.0, 2.0, 3.0]]
    path.write_text(json.dumps(broken))
    records, skipped = _load_through_the_catalog(path, image_root)
    assert skipped == {"bbox missing or not 4 finite numbers": 1,
                       "segmentation: polygon with an odd coordinate count or fewer than 3 points": 1}
    assert sum(len(r["annotations"]) for r in records) == len(doc["annotations"]) - 2
    assert all(math.isfinite(v) for r in records for a in r["annotations"] for v in a["bbox"])


def test_a_valid_file_loads_exactly_as_detectron2_loads_it(small_coco, tmp_path):
    doc, image_root = small_coco
    path = tmp_path / "valid.json"
    path.write_text(json.dumps(doc))
    records, skipped = _load_through_the_catalog(path, image_root)
    assert skipped == {}
    reference = load_coco_json(str(path), image_root, "fuzz_coco_reference")  # detectron2 alone
    MetadataCatalog.remove("fuzz_coco_reference")
    assert records == reference and len(records) == 3
