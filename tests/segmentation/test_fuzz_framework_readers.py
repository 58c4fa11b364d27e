"""Fuzzing (hypothesis, ``derandomize=True``) of the segmentation dataset's own readers, as
``test_fuzz_readers.py`` does for the core readers.

* ``ADE20KFormatDataset``'s ``classes.json``: any JSON value as the document, and the bytes of a valid file
  damaged (truncated, bytes inserted / overwritten with NUL, 0xff, lone UTF-8 lead bytes). Property: a list of
  class names equal to the input's, or a ``ValueError`` naming the file (before: ``json.load`` raised a bare
  ``UnicodeDecodeError`` / ``JSONDecodeError`` without the path).
* an annotation PNG of the data world's ADE20K tree, its bytes damaged the same way, loaded through mmseg's
  real pipeline (``LoadImageFromFile``, ``LoadAnnotations``, ``PackSegInputs``). Property: a sample whose labels
  are in range, or an error naming the annotation file (``RuntimeError`` from the pipeline, or
  ``SegLabelRangeError``).
"""
import json
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("mmseg")

from beit3_plugins.segmentation.datasets import ADE20KFormatDataset, SegLabelRangeError  # noqa: E402

CASES = 120
FUZZ = settings(max_examples=CASES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
leaves = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(allow_nan=False),
                   st.text(max_size=12))
json_values = st.recursive(leaves, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                           st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                           max_leaves=8)
BAD_BYTES = st.sampled_from([b"\x00", b"\xff", b"\xc3", b"\xed\xa0\x80", b"{", b"]"])


@st.composite
def damaged(draw, data: bytes):
    """``data`` truncated, with bytes inserted, or with bytes overwritten."""
    kind = draw(st.sampled_from(["truncate", "insert", "overwrite"]))
    pos = draw(st.integers(0, max(len(data) - 1, 0)))
    if kind == "truncate":
        return data[:pos]
    patch = draw(st.one_of(BAD_BYTES, st.binary(min_size=1, max_size=8)))
    return data[:pos] + patch + data[pos + (len(patch) if kind == "overwrite" else 0):]


def _classes_or_error(path, expected=None):
    try:
        classes = ADE20KFormatDataset._classes_from_file(str(path.parent), path.name)
    except ValueError as exc:
        assert type(exc) is ValueError and str(path) in str(exc), repr(exc)
        return None
    assert isinstance(classes, list) and all(isinstance(c, str) for c in classes)
    if expected is not None:
        assert classes == expected
    return classes


@FUZZ
@given(doc=st.one_of(json_values, st.fixed_dictionaries({"classes": json_values}),
                     st.fixed_dictionaries({"classes": st.lists(st.text(max_size=10), max_size=5)})))
def test_fuzz_classes_json_documents(tmp_path, doc):
    path = tmp_path / "classes.json"
    path.write_text(json.dumps(doc))
    names = doc.get("classes") if isinstance(doc, dict) else doc
    valid = isinstance(names, list) and all(isinstance(c, str) for c in names)
    assert (_classes_or_error(path, names if valid else None) is not None) == valid


@FUZZ
@given(data=damaged(json.dumps({"classes": ["background", "circle", "square", "triangle"]}).encode()))
def test_fuzz_classes_json_damaged_bytes(tmp_path, data):
    path = tmp_path / "classes.json"
    path.write_bytes(data)
    _classes_or_error(path)


@pytest.fixture(scope="module")
def one_image_tree(data_world, tmp_path_factory):
    """The data world's ADE20K tree cut to its first training image and annotation."""
    _, manifest = data_world
    src = manifest.path("ade_root")
    dst = tmp_path_factory.mktemp("ade_one")
    image = sorted((src / "images" / "training").glob("*.jpg"))[0]
    (dst / "images" / "training").mkdir(parents=True)
    (dst / "annotations" / "training").mkdir(parents=True)
    shutil.copy(image, dst / "images" / "training" / image.name)
    annotation = src / "annotations" / "training" / (image.stem + ".png")
    shutil.copy(annotation, dst / "annotations" / "training" / annotation.name)
    shutil.copy(src / "classes.json", dst / "classes.json")
    return dst, dst / "annotations" / "training" / annotation.name, annotation.read_bytes()


@settings(max_examples=20, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_damaged_annotation_png(one_image_tree, data):
    from mmengine.registry import init_default_scope

    init_default_scope("mmseg")
    root, annotation, original = one_image_tree
    annotation.write_bytes(data.draw(damaged(original)))
    dataset = ADE20KFormatDataset(data_root=str(root), data_prefix=dict(img_path="images/training",
                                                                        seg_map_path="annotations/training"),
                                  pipeline=[dict(type="LoadImageFromFile"), dict(type="LoadAnnotations"),
                                            dict(type="PackSegInputs")])
    try:
        sample = dataset.prepare_data(0)
    except (RuntimeError, SegLabelRangeError) as exc:
        assert annotation.name in str(exc), repr(exc)
        return
    finally:
        annotation.write_bytes(original)
    labels = sample["data_samples"].gt_sem_seg.data
    assert labels.shape[-2:] == sample["inputs"].shape[-2:]
