"""Readers for the dataset formats the BEiT-3 recipes train on (and that the shape world writes).

Every reader returns plain records (small dataclasses) and imports no framework, so the fairseq,
detectron2, mmseg and VL-task adapters can all build on them. Bad input fails loudly where it is a
setup error (missing file -> ``FileNotFoundError`` saying what the file should be; broken JSON or invalid
UTF-8 -> ``ValueError`` with file, line and column; a field of the wrong type or missing ->
:class:`InvalidRecordError` naming the file, the record and the field) and is counted where it is a
per-sample accident (a corrupt, missing or decompression-bomb image -> a :class:`SkipCounter` entry, never a
crash of the whole epoch; images are decoded by the one decoder, :func:`beit3_plugins.data.images.load_image`). Readers that take ``skips`` count an invalid record as "invalid_record" and drop
it instead of raising. The fuzz tests (``tests/core/test_fuzz_readers.py``) hold every reader to this.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from beit3_plugins.data.official.answers import (OFFICIAL_MIN_ANSWER_COUNT, beit3_normalize_word,
                                                 official_answer_list, official_vqa_targets)

from .images import CorruptImageError, load_image

PathLike = Union[str, os.PathLike]

__all__ = [
    "SkipCounter", "CorruptImageError", "InvalidRecordError", "read_json", "read_jsonl", "load_image",
    "CaptionRecord", "read_coco_captions", "read_karpathy", "read_text_lines",
    "VqaRecord", "AnswerVocab", "read_vqa", "read_vg_qa",
    "Nlvr2Record", "read_nlvr2", "ImageFolderRecord", "read_image_folder", "IMAGE_EXTENSIONS",
    "CocoImageRecord", "read_coco_instances", "SegmentationRecord", "read_ade20k",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


# ---------------------------------------------------------------------------------------------- basics
class SkipCounter:
    """Counts skipped (or flagged) items by reason and keeps a few examples of each for the report.

    One counter lives in each process; with several data-loader workers, each worker counts its own.
    """

    def __init__(self, max_examples: int = 5) -> None:
        self.max_examples = max_examples
        self.counts: Dict[str, int] = collections.Counter()
        self.examples: Dict[str, List[str]] = collections.defaultdict(list)

    def add(self, reason: str, item: Any = "", error: Optional[BaseException] = None) -> None:
        self.counts[reason] += 1
        if len(self.examples[reason]) < self.max_examples:
            detail = f"{item}" + (f" ({type(error).__name__}: {error})" if error is not None else "")
            self.examples[reason].append(detail)

    def count(self, reason: Optional[str] = None) -> int:
        return sum(self.counts.values()) if reason is None else self.counts.get(reason, 0)

    @property
    def total(self) -> int:
        return self.count()

    def merge(self, other: "SkipCounter") -> "SkipCounter":
        for reason, n in other.counts.items():
            self.counts[reason] += n
            room = self.max_examples - len(self.examples[reason])
            self.examples[reason].extend(other.examples.get(reason, [])[:max(0, room)])
        return self

    def as_dict(self) -> Dict[str, int]:
        return dict(sorted(self.counts.items()))

    def report(self) -> str:
        if not self.total:
            return "no skipped items"
        lines = [f"{self.total} skipped item(s):"]
        for reason, n in sorted(self.counts.items()):
            lines.append(f"  {reason}: {n} (e.g. {'; '.join(self.examples[reason][:3])})")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"SkipCounter({self.as_dict()})"


class InvalidRecordError(ValueError):
    """A record of an annotation file lacks a field or has one of the wrong type; the message names the
    file, the record and the field."""


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "a list",
               dict: "an object"}


def _describe(types: Tuple[type, ...]) -> str:
    return " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)


def _field(record: Any, key: str, types: Union[type, Tuple[type, ...]], path: PathLike, where: str,
           required: bool = True, default: Any = None) -> Any:
    """``record[key]`` checked against ``types`` (a bool is never accepted as a number)."""
    types = types if isinstance(types, tuple) else (types,)
    if not isinstance(record, Mapping):
        raise InvalidRecordError(f"{path}: {where} is {_TYPE_NAMES.get(type(record), type(record).__name__)}, "
                                 "not an object")
    if key not in record:
        if required:
            raise InvalidRecordError(f"{path}: {where} lacks the field {key!r}")
        return default
    value = record[key]
    wrong_bool = isinstance(value, bool) and bool not in types
    if wrong_bool or not isinstance(value, types):
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise InvalidRecordError(f"{path}: {where} has {key!r} = {shown}; expected {_describe(types)}")
    return value


def _list_field(data: Mapping, key: str, path: PathLike, what: str) -> list:
    value = data[key]
    if not isinstance(value, list):
        raise ValueError(f"{path}: {what}: {key!r} must be a list, got {type(value).__name__}")
    return value


def _skip_or_raise(skips: Optional["SkipCounter"], error: InvalidRecordError) -> None:
    if skips is None:
        raise error
    skips.add("invalid_record", error)


def _utf8_error(path: Path, what: str, exc: UnicodeDecodeError, lineno: Optional[int] = None) -> ValueError:
    where = f" at line {lineno}" if lineno is not None else f" at byte {exc.start}"
    return ValueError(f"{path}: {what} is not valid UTF-8{where} ({exc.reason}); re-encode it as UTF-8")


def _require_file(path: PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found" + (" (it is a directory)" if path.is_dir() else ""))
    return path


def _require_dir(path: PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: {what} (a directory) not found")
    return path


def read_json(path: PathLike, what: str = "JSON file") -> Any:
    """Parse a JSON file; errors name the file, what it should be, and the line/column."""
    path = _require_file(path, what)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise _utf8_error(path, what, exc) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON in {what} at line {exc.lineno} column {exc.colno}: {exc.msg}"
                         ) from None
    except RecursionError:
        raise ValueError(f"{path}: {what} nests JSON arrays/objects too deeply to parse") from None


def read_jsonl(path: PathLike, what: str = "JSON-lines file") -> List[Dict[str, Any]]:
    """One JSON object per non-empty line; an invalid line raises naming its line number."""
    path = _require_file(path, what)
    records = []
    with path.open("rb") as handle:
        for lineno, raw in enumerate(handle, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _utf8_error(path, what, exc, lineno) from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: invalid JSON in {what} at line {lineno} column {exc.colno}: "
                                 f"{exc.msg}") from None
            except RecursionError:
                raise ValueError(f"{path}: line {lineno} of {what} nests JSON too deeply to parse") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}: line {lineno} of {what} is a {type(record).__name__}, not an object")
            records.append(record)
    return records


def _expect_keys(data: Any, keys: Sequence[str], path: PathLike, what: str) -> None:
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected {what} (a JSON object), got a {type(data).__name__}")
    missing = [k for k in keys if k not in data]
    if missing:
        raise ValueError(f"{path}: not a valid {what}: missing key(s) {missing}; has {sorted(data)[:10]}")


# ---------------------------------------------------------------------------------------------- captions
@dataclasses.dataclass
class CaptionRecord:
    image_id: int
    image_path: Optional[str]
    captions: List[str]
    split: str = ""


def read_coco_captions(json_path: PathLike, image_dir: Optional[PathLike] = None,
                       skips: Optional[SkipCounter] = None, with_captions: bool = True) -> List[CaptionRecord]:
    """COCO ``captions_*.json``: one record per image (sorted by id) with all its captions.

    ``with_captions=False`` reads an image-info file of a server-scored split (``image_info_test2014.json``,
    NoCaps' ``nocaps_test_image_info.json``): ``images`` only, every record without captions.
    """
    what = "COCO captions file (annotations/captions_<split>.json)" if with_captions else "COCO image-info file"
    data = read_json(json_path, what)
    _expect_keys(data, ["images", "annotations"] if with_captions else ["images"], json_path, what)
    captions: Dict[int, List[str]] = collections.defaultdict(list)
    for i, ann in enumerate(_list_field(data, "annotations", json_path, what) if with_captions else []):
        try:
            where = f"annotation {i}"
            image_id = _field(ann, "image_id", int, json_path, where)
            caption = _field(ann, "caption", str, json_path, where)
        except InvalidRecordError as exc:
            _skip_or_raise(skips, exc)
            continue
        captions[image_id].append(caption)
    images = []
    for i, image in enumerate(_list_field(data, "images", json_path, what)):
        try:
            images.append((_field(image, "id", int, json_path, f"image {i}"),
                           _field(image, "file_name", str, json_path, f"image {i}")))
        except InvalidRecordError as exc:
            _skip_or_raise(skips, exc)
    records = []
    for image_id, file_name in sorted(images):
        path = str(Path(image_dir) / file_name) if image_dir is not None else None
        records.append(CaptionRecord(image_id=image_id, image_path=path, captions=captions.get(image_id, [])))
    return records


def read_karpathy(json_path: PathLike, image_root: Optional[PathLike] = None,
                  splits: Union[str, Sequence[str]] = ("train",), skips: Optional[SkipCounter] = None
                  ) -> List[CaptionRecord]:
    """Karpathy split file (``dataset_coco.json`` / ``dataset_flickr30k.json``).

    ``splits`` selects images by their ``split`` ("train", "restval", "val", "test"); BEiT-3 trains on
    train + restval. Image paths are ``image_root/filepath/filename`` (COCO) or ``image_root/filename``.
    """
    what = "Karpathy split file (dataset_<name>.json)"
    data = read_json(json_path, what)
    _expect_keys(data, ["images"], json_path, what)
    wanted = {splits} if isinstance(splits, str) else set(splits)
    known = {"train", "restval", "val", "test"}
    if not wanted <= known:
        raise ValueError(f"unknown Karpathy split(s) {sorted(wanted - known)}; known: {sorted(known)}")
    records = []
    for i, image in enumerate(_list_field(data, "images", json_path, what)):
        where = f"image {i}"
        try:
            split = _field(image, "split", str, json_path, where)
            if split not in known:
                raise InvalidRecordError(f"{json_path}: {where} has 'split' = {split!r:.40}; expected one of "
                                         f"{sorted(known)}")
            if split not in wanted:
                continue
            filename = _field(image, "filename", str, json_path, where)
            filepath = _field(image, "filepath", str, json_path, where, required=False, default="")
            id_key = "cocoid" if isinstance(image, Mapping) and "cocoid" in image else "imgid"
            image_id = _field(image, id_key, int, json_path, where)
            sentences = _field(image, "sentences", list, json_path, where)
            captions = [_field(sentence, "raw", str, json_path, f"{where} sentence {j}")
                        for j, sentence in enumerate(sentences)]
        except InvalidRecordError as exc:
            _skip_or_raise(skips, exc)
            continue
        path = str(Path(image_root, filepath, filename)) if image_root is not None else None
        records.append(CaptionRecord(image_id=image_id, image_path=path, captions=captions, split=split))
    return records


def read_text_lines(path: PathLike, skip_empty: bool = True) -> List[str]:
    """A text corpus, one sentence per line (trailing whitespace stripped)."""
    what = "text corpus (one sentence per line)"
    path = _require_file(path, what)
    lines = []
    with path.open("rb") as handle:
        for lineno, raw in enumerate(handle, 1):
            try:
                lines.append(raw.decode("utf-8").rstrip("\n\r"))
            except UnicodeDecodeError as exc:
                raise _utf8_error(path, what, exc, lineno) from None
    return [line for line in lines if line.strip()] if skip_empty else lines


# ---------------------------------------------------------------------------------------------- VQA v2
class AnswerVocab:
    """Answer string <-> label index for VQA classification heads (3129 answers in BEiT-3)."""

    def __init__(self, answers: Sequence[str]) -> None:
        self.answers = list(answers)
        self.index = {a: i for i, a in enumerate(self.answers)}
        if len(self.index) != len(self.answers):
            raise ValueError("answer vocabulary has duplicate answers")

    def __len__(self) -> int:
        return len(self.answers)

    def __contains__(self, answer: str) -> bool:
        return answer in self.index

    @classmethod
    def from_annotations(cls, annotation_paths: Union[PathLike, Sequence[PathLike]],
                         min_count: int = OFFICIAL_MIN_ANSWER_COUNT) -> "AnswerVocab":
        """The official answer list (``VQAv2Dataset.make_dataset_index``): the ``multiple_choice_answer`` of every
        question of ``annotation_paths`` in the order given (official: train2014 then val2014), normalised by
        :func:`beit3_normalize_word`, kept when seen ``min_count`` (9) times, in order of first appearance.
        Lower ``min_count`` only for tiny data sets."""
        if isinstance(annotation_paths, (str, os.PathLike)):
            annotation_paths = [annotation_paths]
        majority = []
        for path in annotation_paths:
            for i, ann in enumerate(_read_vqa_annotations(path)):
                majority.append(_field(ann, "multiple_choice_answer", str, path, f"annotation {i}"))
        return cls(official_answer_list(majority, min_count))

    def save(self, path: PathLike) -> None:
        """BEiT-3's ``answer2label.txt`` format: one ``{"answer": ..., "label": i}`` object per line."""
        from beit3_plugins.io_checks import atomic_write

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps({"answer": answer, "label": i}) + "\n" for i, answer in enumerate(self.answers))
        atomic_write(str(path), lambda handle: handle.write(text.encode("utf-8")))

    @classmethod
    def load(cls, path: PathLike) -> "AnswerVocab":
        """Read ``answer2label.txt`` (JSON lines) or a JSON list of answers."""
        what = "VQA answer vocabulary (answer2label.txt or JSON list)"
        path = _require_file(path, what)
        with path.open("rb") as handle:
            starts_as_list = handle.read(4096).lstrip().startswith(b"[")
        if starts_as_list:
            answers = read_json(path, "VQA answer vocabulary (JSON list)")
            if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
                raise ValueError(f"{path}: {what}: a JSON vocabulary must be a list of answer strings")
            vocab = answers
        else:
            rows = read_jsonl(path, "VQA answer vocabulary (answer2label.txt)")
            pairs = [(_field(r, "label", int, path, f"line {i + 1}"), _field(r, "answer", str, path, f"line {i + 1}"))
                     for i, r in enumerate(rows)]
            pairs.sort()
            if [label for label, _ in pairs] != list(range(len(pairs))):
                raise ValueError(f"{path}: answer labels must be 0..{len(pairs) - 1} without gaps")
            vocab = [answer for _, answer in pairs]
        try:
            return cls(vocab)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None


@dataclasses.dataclass
class VqaRecord:
    question_id: int
    image_id: int
    image_path: Optional[str]
    question: str
    answers: List[str]            # annotator answers, beit3_normalize_word'ed (empty for test questions)
    labels: List[int]             # answer-vocabulary indices with a non-zero score
    scores: List[float]           # soft scores aligned with ``labels``
    multiple_choice_answer: str = ""
    question_type: str = ""
    answer_type: str = ""
    raw_answers: List[str] = dataclasses.field(default_factory=list)  # as annotated (the official scorer's input)

    def dense_target(self, num_answers: int) -> np.ndarray:
        """The (num_answers,) float32 soft-score vector a BCE head trains on."""
        target = np.zeros(num_answers, dtype=np.float32)
        target[self.labels] = self.scores
        return target


def _read_vqa_annotations(path: PathLike) -> List[Dict[str, Any]]:
    """The annotation records, each checked: question_id (int), answers (list of {"answer": str}), and the
    optional string fields the records keep."""
    what = "VQA v2 annotations file (v2_mscoco_<split>_annotations.json)"
    data = read_json(path, what)
    _expect_keys(data, ["annotations"], path, what)
    annotations = _list_field(data, "annotations", path, what)
    for i, ann in enumerate(annotations):
        where = f"annotation {i}"
        _field(ann, "question_id", int, path, where)
        for j, answer in enumerate(_field(ann, "answers", list, path, where)):
            _field(answer, "answer", str, path, f"{where} answer {j}")
        for key in ("multiple_choice_answer", "question_type", "answer_type"):
            _field(ann, key, str, path, where, required=False)
    return annotations


def read_vqa(questions_path: PathLike, annotations_path: Optional[PathLike] = None,
             image_dir: Optional[PathLike] = None, vocab: Optional[AnswerVocab] = None,
             drop_out_of_vocab: bool = False, skips: Optional[SkipCounter] = None) -> List[VqaRecord]:
    """Merge VQA v2 questions with their annotations into records with soft-score targets.

    Targets are the official ones (:func:`~beit3_plugins.data.official.answers.official_vqa_targets`): each
    distinct *raw* annotator answer found in ``vocab`` scores by how many annotators gave it. A question whose
    answers are all outside the vocabulary is counted in ``skips`` as "vqa_answers_out_of_vocab" (and dropped with
    ``drop_out_of_vocab``, as training does). Without annotations (test-dev/test) targets are empty.
    Image paths follow COCO: ``image_dir/COCO_<data_subtype>_<image_id:012d>.jpg``.
    """
    what = "VQA v2 questions file (v2_OpenEnded_mscoco_<split>_questions.json)"
    data = read_json(questions_path, what)
    _expect_keys(data, ["questions"], questions_path, what)
    subtype = _field(data, "data_subtype", str, questions_path, what, required=False, default="")
    questions = []
    for i, q in enumerate(_list_field(data, "questions", questions_path, what)):
        try:
            for key, kind in (("question_id", int), ("image_id", int), ("question", str)):
                _field(q, key, kind, questions_path, f"question {i}")
        except InvalidRecordError as exc:
            _skip_or_raise(skips, exc)
            continue
        questions.append(q)
    annotations: Dict[int, Dict[str, Any]] = {}
    if annotations_path is not None:
        annotations = {a["question_id"]: a for a in _read_vqa_annotations(annotations_path)}
        missing = [q["question_id"] for q in questions if q["question_id"] not in annotations]
        if missing:
            raise ValueError(f"{annotations_path}: no annotation for {len(missing)} question(s) of "
                             f"{questions_path} (first ids {missing[:5]}); are they the same split?")
        if vocab is None:
            raise ValueError("read_vqa needs an AnswerVocab to turn annotations into targets; build one "
                             "with AnswerVocab.from_annotations(train_annotations)")
    records = []
    for q in questions:
        image_path = None
        if image_dir is not None:
            images = "test2015" if subtype == "test-dev2015" else subtype  # test-dev asks about test2015 images
            image_path = str(Path(image_dir) / f"COCO_{images}_{q['image_id']:012d}.jpg")
        record = VqaRecord(question_id=q["question_id"], image_id=q["image_id"], image_path=image_path,
                           question=q["question"], answers=[], labels=[], scores=[])
        ann = annotations.get(q["question_id"])
        if ann is not None:
            record.raw_answers = [a["answer"] for a in ann["answers"]]
            record.answers = [beit3_normalize_word(a) for a in record.raw_answers]
            record.multiple_choice_answer = beit3_normalize_word(ann.get("multiple_choice_answer", ""))
            record.question_type = ann.get("question_type", "")
            record.answer_type = ann.get("answer_type", "")
            record.labels, record.scores = official_vqa_targets(record.raw_answers, vocab.index)
            if not record.labels:
                if skips is not None:
                    skips.add("vqa_answers_out_of_vocab", f"question {q['question_id']}")
                if drop_out_of_vocab:
                    continue
        records.append(record)
    return records


def read_vg_qa(qa_path: PathLike, image_dir: Optional[PathLike] = None, vocab: Optional[AnswerVocab] = None,
               skips: Optional[SkipCounter] = None) -> List[VqaRecord]:
    """Visual Genome QA (``question_answers.json``: ``[{"id": image_id, "qas": [{"qa_id", "image_id",
    "question", "answer"}, ...]}, ...]``) as VQA training records: the one answer, normalised, scores 1.0.

    Images are ``image_dir/<image_id>.jpg``. A question whose answer is not in ``vocab`` is dropped and counted
    ("vg_answer_out_of_vocab"), as VQA training drops unanswerable questions.
    """
    what = "Visual Genome QA file (question_answers.json)"
    data = read_json(qa_path, what)
    if not isinstance(data, list):
        raise ValueError(f"{qa_path}: {what} must be a JSON list of images with 'qas'")
    records = []
    for entry in data:
        for qa in entry.get("qas", []):
            missing = [k for k in ("qa_id", "question", "answer") if k not in qa]
            if missing:
                raise ValueError(f"{qa_path}: a question of image {entry.get('id')} lacks {missing}")
            image_id = qa.get("image_id", entry.get("id"))
            answer = beit3_normalize_word(qa["answer"])  # no official VG code: normalised like the list
            record = VqaRecord(question_id=qa["qa_id"], image_id=image_id, question=qa["question"],
                               image_path=str(Path(image_dir) / f"{image_id}.jpg") if image_dir is not None else None,
                               answers=[answer], labels=[], scores=[], raw_answers=[qa["answer"]])
            if vocab is not None:
                if answer not in vocab:
                    if skips is not None:
                        skips.add("vg_answer_out_of_vocab", f"qa {qa['qa_id']}")
                    continue
                record.labels, record.scores = [vocab.index[answer]], [1.0]
            records.append(record)
    return records


# ---------------------------------------------------------------------------------------------- NLVR2
@dataclasses.dataclass
class Nlvr2Record:
    identifier: str
    sentence: str
    label: int                     # 1 = True, 0 = False
    left_path: Optional[str]
    right_path: Optional[str]


def read_nlvr2(jsonl_path: PathLike, image_dir: Optional[PathLike] = None,
               skips: Optional[SkipCounter] = None) -> List[Nlvr2Record]:
    """NLVR2 ``{train,dev,test1}.json`` (JSON lines).

    Images are ``image_dir[/directory]/<split>-<set>-<pair>-img{0,1}.png`` where the prefix is the
    identifier without its sentence index and ``directory`` exists only in train records.
    """
    what = "NLVR2 split file ({train,dev,test1}.json, JSON lines)"
    rows = read_jsonl(jsonl_path, what)
    records = []
    for lineno, row in enumerate(rows, 1):
        where = f"record {lineno} of {what}"
        try:
            identifier = _field(row, "identifier", str, jsonl_path, where)
            sentence = _field(row, "sentence", str, jsonl_path, where)
            raw_label = _field(row, "label", (str, bool), jsonl_path, where)
            directory = _field(row, "directory", (str, int), jsonl_path, where, required=False)
            label = str(raw_label).lower()
            if label not in ("true", "false"):
                raise InvalidRecordError(f"{jsonl_path}: record {lineno} has label {raw_label!r}; expected True/False")
        except InvalidRecordError as exc:
            _skip_or_raise(skips, exc)
            continue
        prefix = identifier.rsplit("-", 1)[0]
        left = right = None
        if image_dir is not None:
            folder = Path(image_dir)
            if directory is not None:
                folder = folder / str(directory)
            left, right = str(folder / f"{prefix}-img0.png"), str(folder / f"{prefix}-img1.png")
        records.append(Nlvr2Record(identifier=identifier, sentence=sentence,
                                   label=int(label == "true"), left_path=left, right_path=right))
    return records


# ---------------------------------------------------------------------------------------------- ImageNet
@dataclasses.dataclass
class ImageFolderRecord:
    path: str
    label: int
    class_name: str


def read_image_folder(root: PathLike, classes: Optional[Sequence[str]] = None,
                      extensions: Iterable[str] = IMAGE_EXTENSIONS
                      ) -> Tuple[List[ImageFolderRecord], List[str]]:
    """ImageNet-style ``root/<class>/<image>``; classes are the sorted folder names unless given."""
    root = _require_dir(root, "image folder root with one sub-folder per class")
    found = sorted(p.name for p in root.iterdir() if p.is_dir())
    classes = list(classes) if classes is not None else found
    if not classes:
        raise ValueError(f"{root}: no class folders found")
    absent = [c for c in classes if c not in found]
    if absent:
        raise FileNotFoundError(f"{root}: class folder(s) {absent} not found; present: {found}")
    exts = {e.lower() for e in extensions}
    records = []
    for label, name in enumerate(classes):
        for path in sorted((root / name).rglob("*")):
            if path.is_file() and path.suffix.lower() in exts:
                records.append(ImageFolderRecord(path=str(path), label=label, class_name=name))
    return records, classes


# ---------------------------------------------------------------------------------------------- COCO instances
@dataclasses.dataclass
class CocoImageRecord:
    image_id: int
    image_path: Optional[str]
    width: int
    height: int
    annotations: List[Dict[str, Any]]  # bbox (xywh), category_id, segmentation, area, iscrowd


def _check_instance(ann: Any, path: PathLike, where: str) -> int:
    image_id = _field(ann, "image_id", int, path, where)
    _field(ann, "category_id", int, path, where)
    bbox = _field(ann, "bbox", list, path, where)
    if len(bbox) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
                                 for v in bbox):
        raise InvalidRecordError(f"{path}: {where} has bbox {bbox!r:.60}; expected 4 finite numbers (x, y, w, h)")
    _field(ann, "iscrowd", (int, bool), path, where, required=False)
    _field(ann, "segmentation", (list, dict), path, where, required=False)
    return image_id


def read_coco_instances(json_path: PathLike, image_dir: Optional[PathLike] = None,
                        skips: Optional[SkipCounter] = None
                        ) -> Tuple[List[CocoImageRecord], List[Dict[str, Any]]]:
    """COCO ``instances_*.json`` as (records per image sorted by id, categories)."""
    what = "COCO instances file (annotations/instances_<split>.json)"
    data = read_json(json_path, what)
    _expect_keys(data, ["images", "annotations", "categories"], json_path, what)
    categories = _list_field(data, "categories", json_path, what)
    for i, category in enumerate(categories):
        _field(category, "id", int, json_path, f"category {i}")
        _field(category, "name", str, json_path, f"category {i}")
    per_image: Dict[int, List[Dict[str, Any]]] = collections.defaultdict(list)
    for i, ann in enumerate(_list_field(data, "annotations", json_path, what)):
        try:
            per_image[_check_instance(ann, json_path, f"annotation {i}")].append(ann)
        except InvalidRecordError as exc:
            _skip_or_raise(skips, exc)
    images = []
    for i, image in enumerate(_list_field(data, "images", json_path, what)):
        try:
            images.append(tuple(_field(image, key, kind, json_path, f"image {i}") for key, kind in
                                (("id", int), ("file_name", str), ("width", int), ("height", int))))
        except InvalidRecordError as exc:
            _skip_or_raise(skips, exc)
    records = []
    for image_id, file_name, width, height in sorted(images):
        path = str(Path(image_dir) / file_name) if image_dir is not None else None
        records.append(CocoImageRecord(image_id=image_id, image_path=path, width=width, height=height,
                                       annotations=per_image.get(image_id, [])))
    return records, list(categories)


# ---------------------------------------------------------------------------------------------- ADE20K
@dataclasses.dataclass
class SegmentationRecord:
    image_path: str
    label_path: str


def read_ade20k(root: PathLike, split: str = "training", skips: Optional[SkipCounter] = None
                ) -> List[SegmentationRecord]:
    """``ADEChallengeData2016/images/<split>/*.jpg`` paired with ``annotations/<split>/*.png``.

    An image without a label map is counted as "missing_label_map" (or raises without ``skips``).
    """
    if split not in ("training", "validation"):
        raise ValueError(f"ADE20K split must be 'training' or 'validation', got {split!r}")
    images = _require_dir(Path(root) / "images" / split, f"ADE20K {split} images")
    labels = _require_dir(Path(root) / "annotations" / split, f"ADE20K {split} label maps")
    records = []
    for image in sorted(images.glob("*.jpg")):
        label = labels / (image.stem + ".png")
        if not label.is_file():
            if skips is None:
                raise FileNotFoundError(f"{label}: ADE20K label map for {image.name} not found")
            skips.add("missing_label_map", image)
            continue
        records.append(SegmentationRecord(image_path=str(image), label_path=str(label)))
    return records
