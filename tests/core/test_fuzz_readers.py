"""Property-based fuzzing (hypothesis) of every annotation reader in ``beit3_plugins.data.readers`` and of
``pretraining.data.read_pairs``.

Each reader is fed (a) well-formed files whose fields are then mutated (a field dropped, or replaced by an
arbitrary JSON value: null, booleans, numbers, empty / 5000-character / NUL-carrying strings, lists,
objects) and (b) the bytes of a well-formed file damaged (truncated, bytes inserted or overwritten with NUL,
0xff and other invalid UTF-8). The property: the reader returns records whose fields have the documented
types and equal the input's values, or it raises ``ValueError`` / ``InvalidRecordError`` (exactly those
types, never a bare ``TypeError`` / ``KeyError`` / ``UnicodeDecodeError``) whose message names the file.
With a ``SkipCounter``, no record is lost silently: records returned + records counted = records given.

``CASES`` is the number of examples hypothesis tries per reader and family (run with
``--hypothesis-show-statistics`` to see them); docs/reliability.md lists them.
"""
import json
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beit3_plugins.data.readers import (AnswerVocab, InvalidRecordError, SkipCounter, read_coco_captions,
                                        read_coco_instances, read_json, read_jsonl, read_karpathy, read_nlvr2,
                                        read_text_lines, read_vqa)

CASES = 120
FUZZ = settings(max_examples=CASES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# ------------------------------------------------------------------------------------------ strategies
texts = st.one_of(st.text(max_size=20), st.just(""), st.just("a\x00b"), st.just("x" * 5000),
                  st.text(alphabet=string.printable, min_size=1, max_size=8))
ints = st.integers(min_value=0, max_value=10**6)
json_leaves = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(allow_nan=False),
                        texts)
json_values = st.recursive(json_leaves, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                                st.dictionaries(texts, inner, max_size=3)),
                           max_leaves=6)


def _paths(node, prefix=()):
    """Every (container, key) position in a JSON tree."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield prefix + (key,)
            yield from _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield prefix + (i,)
            yield from _paths(value, prefix + (i,))


@st.composite
def mutated(draw, documents):
    """A valid document with 0-3 fields deleted or replaced by arbitrary JSON."""
    doc = draw(documents)
    for _ in range(draw(st.integers(0, 3))):
        positions = list(_paths(doc))
        if not positions:
            break
        *parent_keys, last = draw(st.sampled_from(positions))
        parent = doc
        for key in parent_keys:
            parent = parent[key]
        if isinstance(parent, dict) and draw(st.booleans()):
            del parent[last]
        else:
            parent[last] = draw(json_values)
    return doc


@st.composite
def damaged_bytes(draw, documents, as_lines=False):
    """The bytes of a valid document, then truncated / with bytes inserted or overwritten."""
    doc = draw(documents)
    data = bytearray(("\n".join(json.dumps(r) for r in doc) if as_lines else json.dumps(doc)).encode())
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["truncate", "insert", "overwrite"]))
        at = draw(st.integers(0, len(data)))
        junk = draw(st.one_of(st.sampled_from([b"\x00", b"\xff", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"{", b'"']),
                              st.binary(min_size=1, max_size=4)))
        if kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = junk
        else:
            data[at:at + len(junk)] = junk
    return bytes(data)


# valid documents of each format
coco_caption_docs = st.builds(
    lambda ids, caps: {"images": [{"id": i, "file_name": f"{i}.jpg"} for i in ids],
                       "annotations": [{"image_id": ids[k % len(ids)], "id": k, "caption": c} for k, c in enumerate(caps)]},
    st.lists(ints, min_size=1, max_size=4, unique=True), st.lists(texts, max_size=5))
karpathy_docs = st.builds(
    lambda imgs: {"images": [{"split": s, "filepath": "train2014", "filename": f"{i}.jpg", "cocoid": i, "imgid": i,
                              "sentences": [{"raw": c, "tokens": c.split()} for c in caps]}
                             for i, (s, caps) in enumerate(imgs)], "dataset": "coco"},
    st.lists(st.tuples(st.sampled_from(["train", "restval", "val", "test"]), st.lists(texts, max_size=3)),
             min_size=1, max_size=4))
nlvr2_docs = st.lists(st.builds(lambda i, s, lab: {"identifier": f"train-{i}-0-0", "sentence": s,
                                                   "label": lab, "directory": i % 3},
                                ints, texts, st.sampled_from(["True", "False", True, False])), min_size=1, max_size=4)
vqa_pairs = st.lists(st.tuples(ints, texts, st.lists(st.sampled_from(["yes", "no", "2", "red", "cat"]), max_size=4)),
                     min_size=1, max_size=4, unique_by=lambda t: t[0])
coco_instance_docs = st.builds(
    lambda ids, boxes: {"images": [{"id": i, "file_name": f"{i}.jpg", "width": 64, "height": 48} for i in ids],
                        "annotations": [{"id": k, "image_id": ids[k % len(ids)], "category_id": 1, "bbox": list(b),
                                         "iscrowd": 0, "area": b[2] * b[3]} for k, b in enumerate(boxes)],
                        "categories": [{"id": 1, "name": "square"}]},
    st.lists(ints, min_size=1, max_size=3, unique=True),
    st.lists(st.tuples(*[st.floats(0, 60, allow_nan=False)] * 4), max_size=4))


# ------------------------------------------------------------------------------------------ the property
def _write(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    return path


def _accepts_or_names_file(call, path):
    """Run ``call``; a failure must be a plain ValueError / InvalidRecordError that names ``path``."""
    try:
        return call()
    except ValueError as exc:
        assert type(exc) in (ValueError, InvalidRecordError), f"{type(exc).__name__}: {exc}"
        assert str(path) in str(exc), str(exc)
        return None


@FUZZ
@given(doc=mutated(coco_caption_docs))
def test_fuzz_coco_captions(tmp_path_factory, doc):
    path = _write(tmp_path_factory.mktemp("f"), "captions.json", doc)
    records = _accepts_or_names_file(lambda: read_coco_captions(path, "img"), path)
    for record in records or []:
        assert type(record.image_id) is int and all(type(c) is str for c in record.captions)
        assert record.image_path == str(Path("img", next(im["file_name"] for im in doc["images"]
                                                          if im["id"] == record.image_id)))
        expected = [a["caption"] for a in doc["annotations"] if a["image_id"] == record.image_id]
        assert record.captions == expected  # no caption lost, none invented
    skips = SkipCounter()
    counted = _accepts_or_names_file(lambda: read_coco_captions(path, skips=skips), path)
    if counted is not None:
        assert len(counted) + skips.count("invalid_record") >= len(doc["images"])


@FUZZ
@given(doc=mutated(karpathy_docs))
def test_fuzz_karpathy(tmp_path_factory, doc):
    path = _write(tmp_path_factory.mktemp("f"), "dataset_coco.json", doc)
    splits = ("train", "restval", "val", "test")
    records = _accepts_or_names_file(lambda: read_karpathy(path, "root", splits=splits), path)
    for record in records or []:
        assert type(record.image_id) is int and record.split in splits
        assert all(type(c) is str for c in record.captions)
    skips = SkipCounter()
    counted = _accepts_or_names_file(lambda: read_karpathy(path, splits=splits, skips=skips), path)
    if counted is not None:
        assert len(counted) + skips.count("invalid_record") == len(doc["images"])


@FUZZ
@given(rows=st.lists(mutated(nlvr2_docs).map(lambda rows: rows[0]) | nlvr2_docs.map(lambda rows: rows[0]),
                     min_size=1, max_size=4))
def test_fuzz_nlvr2(tmp_path_factory, rows):
    path = _write(tmp_path_factory.mktemp("f"), "train.json", "\n".join(json.dumps(r) for r in rows).encode())
    records = _accepts_or_names_file(lambda: read_nlvr2(path, "img"), path)
    if records is not None:
        assert len(records) == len(rows)
        for record, row in zip(records, rows):
            assert record.sentence == row["sentence"] and type(record.sentence) is str
            assert record.label == int(str(row["label"]).lower() == "true")  # never a silently wrong label
    skips = SkipCounter()
    counted = _accepts_or_names_file(lambda: read_nlvr2(path, skips=skips), path)
    if counted is not None:
        assert len(counted) + skips.count("invalid_record") == len(rows)


def _vqa_files(tmp, pairs, mutate_q, mutate_a):
    questions = {"data_subtype": "train2014",
                 "questions": [{"question_id": q, "image_id": q, "question": text} for q, text, _ in pairs]}
    annotations = {"annotations": [{"question_id": q, "multiple_choice_answer": (ans or ["yes"])[0],
                                    "answers": [{"answer": a, "answer_id": k} for k, a in enumerate(ans)],
                                    "question_type": "what", "answer_type": "other"} for q, _, ans in pairs]}
    return (_write(tmp, "q.json", mutate_q(questions)), _write(tmp, "a.json", mutate_a(annotations)))


@FUZZ
@given(pairs=vqa_pairs, data=st.data())
def test_fuzz_vqa(tmp_path_factory, pairs, data):
    which = data.draw(st.sampled_from(["questions", "annotations"]))
    mutate = lambda doc: data.draw(mutated(st.just(doc)))  # noqa: E731
    keep = lambda doc: doc  # noqa: E731
    q_path, a_path = _vqa_files(tmp_path_factory.mktemp("f"), pairs,
                                mutate if which == "questions" else keep, mutate if which == "annotations" else keep)
    vocab = AnswerVocab(["yes", "no", "2", "red", "cat"])
    bad = q_path if which == "questions" else a_path
    records = _accepts_or_names_file(lambda: read_vqa(q_path, a_path, "img", vocab), bad)
    for record in records or []:
        assert type(record.question_id) is int and type(record.question) is str
        assert all(0 <= label < len(vocab) for label in record.labels) and len(record.labels) == len(record.scores)
    built = _accepts_or_names_file(lambda: AnswerVocab.from_annotations(a_path), a_path)
    assert built is None or all(type(a) is str and a for a in built.answers)


@FUZZ
@given(doc=mutated(coco_instance_docs))
def test_fuzz_coco_instances(tmp_path_factory, doc):
    path = _write(tmp_path_factory.mktemp("f"), "instances.json", doc)
    result = _accepts_or_names_file(lambda: read_coco_instances(path, "img"), path)
    if result is not None:
        records, categories = result
        for record in records:
            assert type(record.width) is int and type(record.height) is int
            for ann in record.annotations:
                assert len(ann["bbox"]) == 4 and type(ann["category_id"]) is int
        assert all(type(c["id"]) is int for c in categories)


@FUZZ
@given(rows=st.lists(st.one_of(st.builds(lambda a, i: {"answer": a, "label": i}, texts, st.integers(0, 3)),
                               json_values), min_size=1, max_size=4))
def test_fuzz_answer_vocab_file(tmp_path_factory, rows):
    path = _write(tmp_path_factory.mktemp("f"), "answer2label.txt", "\n".join(json.dumps(r) for r in rows).encode())
    vocab = _accepts_or_names_file(lambda: AnswerVocab.load(path), path)
    if vocab is not None:
        assert all(type(a) is str for a in vocab.answers)
        assert [vocab.index[a] for a in vocab.answers] == list(range(len(vocab)))


READERS_OF_BYTES = {
    "read_json": (coco_caption_docs, False, lambda p: read_json(p)),
    "read_jsonl": (nlvr2_docs, True, lambda p: read_jsonl(p)),
    "read_coco_captions": (coco_caption_docs, False, lambda p: read_coco_captions(p)),
    "read_karpathy": (karpathy_docs, False, lambda p: read_karpathy(p, splits=("train", "val", "test", "restval"))),
    "read_nlvr2": (nlvr2_docs, True, lambda p: read_nlvr2(p)),
    "read_coco_instances": (coco_instance_docs, False, lambda p: read_coco_instances(p)),
    "read_text_lines": (st.lists(texts, min_size=1, max_size=4), True, lambda p: read_text_lines(p)),
    "AnswerVocab.load": (st.lists(texts, min_size=1, max_size=4, unique=True), False, lambda p: AnswerVocab.load(p)),
}


def _pairs_reader(path):
    from beit3_plugins.pretraining.data import read_pairs

    return read_pairs(str(path), "img")


READERS_OF_BYTES["pretraining.read_pairs"] = (st.one_of(coco_caption_docs, karpathy_docs), False, _pairs_reader)


@pytest.mark.parametrize("reader", sorted(READERS_OF_BYTES))
def test_fuzz_damaged_bytes(reader, tmp_path_factory):
    documents, as_lines, call = READERS_OF_BYTES[reader]
    tried = []

    @FUZZ
    @given(content=damaged_bytes(documents, as_lines=as_lines))
    def run(content):
        path = _write(tmp_path_factory.mktemp("f"), "file.json", content)
        _accepts_or_names_file(lambda: call(path), path)
        tried.append(content)

    run()
    assert len(tried) >= CASES // 2  # hypothesis really explored the family


def test_the_first_probe_cases_are_clear_errors(tmp_path):
    """The four findings of issue 14's first probe, as written there."""
    path = _write(tmp_path, "captions.json", {"images": "x", "annotations": 5})
    with pytest.raises(ValueError, match="'annotations' must be a list") as info:
        read_coco_captions(path)
    assert str(path) in str(info.value)
    bad_utf8 = _write(tmp_path, "bad.json", b'{"images": [], "annotations": [], "x": "\xff\xfe"}')
    with pytest.raises(ValueError, match="not valid UTF-8"):
        read_coco_captions(bad_utf8)
    null_caption = _write(tmp_path, "null.json", {"images": [{"id": 1, "file_name": "1.jpg"}],
                                                  "annotations": [{"image_id": 1, "caption": None}]})
    with pytest.raises(InvalidRecordError, match="annotation 0 has 'caption' = None; expected a string"):
        read_coco_captions(null_caption)
    skips = SkipCounter()
    assert read_coco_captions(null_caption, skips=skips)[0].captions == [] and skips.count("invalid_record") == 1
    nlvr2 = _write(tmp_path, "dev.json", b'{"identifier": "dev-0-0-0", "sentence": null, "label": "True"}\n')
    with pytest.raises(InvalidRecordError, match="'sentence' = None"):
        read_nlvr2(nlvr2)
    karpathy = _write(tmp_path, "k.json", {"images": [{"split": "train", "filename": "a.jpg", "cocoid": 1,
                                                       "sentences": [{"raw": None}]}]})
    with pytest.raises(InvalidRecordError, match="sentence 0 has 'raw' = None"):
        read_karpathy(karpathy)
