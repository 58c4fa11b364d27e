"""Readers for the dataset formats the BEiT-3 recipes train on (and that the shape world writes).

Every reader returns plain records (small dataclasses) and imports no framework, so the fairseq,
detectron2, mmseg and VL-task adapters can all build on them. Bad input fails loudly where it is a
setup error (missing file -> ``FileNotFoundError`` saying what the file should be; broken JSON ->
``ValueError`` with file, line and column) and is counted where it is a per-sample accident (a corrupt
or missing image -> a :class:`SkipCounter` entry, never a crash of the whole epoch).
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

PathLike = Union[str, os.PathLike]

__all__ = [
    "SkipCounter", "CorruptImageError", "read_json", "read_jsonl", "load_image",
    "CaptionRecord", "read_coco_captions", "read_karpathy", "read_text_lines",
    "VqaRecord", "AnswerVocab", "normalize_answer", "vqa_score", "read_vqa", "read_vg_qa",
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


class CorruptImageError(ValueError):
    """An image file exists but cannot be decoded."""


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
    text = path.read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON in {what} at line {exc.lineno} column {exc.colno}: {exc.msg}"
                         ) from None


def read_jsonl(path: PathLike, what: str = "JSON-lines file") -> List[Dict[str, Any]]:
    """One JSON object per non-empty line; an invalid line raises naming its line number."""
    path = _require_file(path, what)
    records = []
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: invalid JSON in {what} at line {lineno} column {exc.colno}: "
                                 f"{exc.msg}") from None
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


def load_image(path: PathLike, skips: Optional[SkipCounter] = None, mode: str = "RGB"):
    """Open an image fully decoded in ``mode``.

    Without ``skips`` a missing file raises ``FileNotFoundError`` and an undecodable one
    :class:`CorruptImageError`; with ``skips`` both are counted ("missing_image" / "corrupt_image") and
    ``None`` is returned so one bad file cannot end an epoch.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: image file not found")
        try:
            with Image.open(path) as image:
                image.load()  # decode now: truncated files fail here, not later in a transform
                return image.convert(mode)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise CorruptImageError(f"{path}: cannot decode image: {exc}") from exc
    except FileNotFoundError as exc:
        if skips is None:
            raise
        skips.add("missing_image", path, exc)
    except CorruptImageError as exc:
        if skips is None:
            raise
        skips.add("corrupt_image", path, exc.__cause__)
    return None


# ---------------------------------------------------------------------------------------------- captions
@dataclasses.dataclass
class CaptionRecord:
    image_id: int
    image_path: Optional[str]
    captions: List[str]
    split: str = ""


def read_coco_captions(json_path: PathLike, image_dir: Optional[PathLike] = None) -> List[CaptionRecord]:
    """COCO ``captions_*.json``: one record per image (sorted by id) with all its captions."""
    what = "COCO captions file (annotations/captions_<split>.json)"
    data = read_json(json_path, what)
    _expect_keys(data, ["images", "annotations"], json_path, what)
    captions: Dict[int, List[str]] = collections.defaultdict(list)
    for ann in data["annotations"]:
        captions[ann["image_id"]].append(ann["caption"])
    records = []
    for image in sorted(data["images"], key=lambda im: im["id"]):
        path = str(Path(image_dir) / image["file_name"]) if image_dir is not None else None
        records.append(CaptionRecord(image_id=image["id"], image_path=path, captions=captions.get(image["id"], [])))
    return records


def read_karpathy(json_path: PathLike, image_root: Optional[PathLike] = None,
                  splits: Union[str, Sequence[str]] = ("train",)) -> List[CaptionRecord]:
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
    for image in data["images"]:
        if image.get("split") not in wanted:
            continue
        path = None
        if image_root is not None:
            path = str(Path(image_root, image.get("filepath", ""), image["filename"]))
        image_id = image.get("cocoid", image.get("imgid"))
        records.append(CaptionRecord(image_id=image_id, image_path=path,
                                     captions=[s["raw"] for s in image["sentences"]], split=image["split"]))
    return records


def read_text_lines(path: PathLike, skip_empty: bool = True) -> List[str]:
    """A text corpus, one sentence per line (trailing whitespace stripped)."""
    path = _require_file(path, "text corpus (one sentence per line)")
    with path.open(encoding="utf-8") as handle:
        lines = [line.rstrip("\n\r") for line in handle]
    return [line for line in lines if line.strip()] if skip_empty else lines


# ---------------------------------------------------------------------------------------------- VQA v2
_CONTRACTIONS = {
    "arent": "aren't", "cant": "can't", "couldnt": "couldn't", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hasnt": "hasn't", "havent": "haven't", "isnt": "isn't", "its": "it's",
    "shouldnt": "shouldn't", "wasnt": "wasn't", "werent": "weren't", "wont": "won't", "wouldnt": "wouldn't",
    "youre": "you're", "theyre": "they're", "whats": "what's", "thats": "that's", "theres": "there's",
}
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
            "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
          "?", "!"]
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def normalize_answer(answer: str) -> str:
    """The VQA evaluation's answer normalisation: punctuation, number words -> digits, articles,
    contractions (as the official evaluation script and the BEiT-3 answer vocabulary do)."""
    text = answer.replace("\n", " ").replace("\t", " ").strip().lower()
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or re.search(_COMMA_STRIP, text) is not None:
            text = text.replace(p, "")
        else:
            text = text.replace(p, " ")
    text = _PERIOD_STRIP.sub("", text)
    words = []
    for word in text.split():
        word = _NUMBERS.get(word, word)
        if word in _ARTICLES:
            continue
        words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def vqa_score(matching_annotators: int) -> float:
    """Soft target of an answer given by ``n`` of the 10 annotators: 0, 0.3, 0.6, 0.9, then 1.0."""
    return (0.0, 0.3, 0.6, 0.9)[matching_annotators] if matching_annotators < 4 else 1.0


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
    def from_annotations(cls, annotation_paths: Union[PathLike, Sequence[PathLike]], min_count: int = 1,
                         top_k: Optional[int] = None) -> "AnswerVocab":
        """Answers given by annotators at least ``min_count`` times, most frequent first (ties by text)."""
        if isinstance(annotation_paths, (str, os.PathLike)):
            annotation_paths = [annotation_paths]
        counts: Dict[str, int] = collections.Counter()
        for path in annotation_paths:
            for ann in _read_vqa_annotations(path):
                for answer in ann["answers"]:
                    counts[normalize_answer(answer["answer"])] += 1
        ranked = sorted((a for a, n in counts.items() if n >= min_count and a), key=lambda a: (-counts[a], a))
        return cls(ranked[:top_k] if top_k else ranked)

    def save(self, path: PathLike) -> None:
        """BEiT-3's ``answer2label.txt`` format: one ``{"answer": ..., "label": i}`` object per line."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            for i, answer in enumerate(self.answers):
                handle.write(json.dumps({"answer": answer, "label": i}) + "\n")

    @classmethod
    def load(cls, path: PathLike) -> "AnswerVocab":
        """Read ``answer2label.txt`` (JSON lines) or a JSON list of answers."""
        path = _require_file(path, "VQA answer vocabulary (answer2label.txt or JSON list)")
        text = path.read_text(encoding="utf-8").strip()
        if text.startswith("["):
            answers = read_json(path, "VQA answer vocabulary (JSON list)")
            return cls([str(a) for a in answers])
        rows = read_jsonl(path, "VQA answer vocabulary (answer2label.txt)")
        by_label = sorted(rows, key=lambda r: r["label"])
        if [r["label"] for r in by_label] != list(range(len(by_label))):
            raise ValueError(f"{path}: answer labels must be 0..{len(by_label) - 1} without gaps")
        return cls([r["answer"] for r in by_label])


@dataclasses.dataclass
class VqaRecord:
    question_id: int
    image_id: int
    image_path: Optional[str]
    question: str
    answers: List[str]            # normalised answers of the annotators (empty for test questions)
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
    what = "VQA v2 annotations file (v2_mscoco_<split>_annotations.json)"
    data = read_json(path, what)
    _expect_keys(data, ["annotations"], path, what)
    return data["annotations"]


def read_vqa(questions_path: PathLike, annotations_path: Optional[PathLike] = None,
             image_dir: Optional[PathLike] = None, vocab: Optional[AnswerVocab] = None,
             drop_out_of_vocab: bool = False, skips: Optional[SkipCounter] = None) -> List[VqaRecord]:
    """Merge VQA v2 questions with their annotations into records with soft-score targets.

    Targets follow the reference: each distinct (normalised) answer in ``vocab`` gets
    :func:`vqa_score` of the number of annotators who gave it. A question whose answers are all outside
    the vocabulary is counted in ``skips`` as "vqa_answers_out_of_vocab" (and dropped with
    ``drop_out_of_vocab``, as training does). Without annotations (test-dev/test) targets are empty.
    Image paths follow COCO: ``image_dir/COCO_<data_subtype>_<image_id:012d>.jpg``.
    """
    what = "VQA v2 questions file (v2_OpenEnded_mscoco_<split>_questions.json)"
    data = read_json(questions_path, what)
    _expect_keys(data, ["questions"], questions_path, what)
    subtype = data.get("data_subtype", "")
    annotations: Dict[int, Dict[str, Any]] = {}
    if annotations_path is not None:
        annotations = {a["question_id"]: a for a in _read_vqa_annotations(annotations_path)}
        missing = [q["question_id"] for q in data["questions"] if q["question_id"] not in annotations]
        if missing:
            raise ValueError(f"{annotations_path}: no annotation for {len(missing)} question(s) of "
                             f"{questions_path} (first ids {missing[:5]}); are they the same split?")
        if vocab is None:
            raise ValueError("read_vqa needs an AnswerVocab to turn annotations into targets; build one "
                             "with AnswerVocab.from_annotations(train_annotations)")
    records = []
    for q in data["questions"]:
        image_path = None
        if image_dir is not None:
            image_path = str(Path(image_dir) / f"COCO_{subtype}_{q['image_id']:012d}.jpg")
        record = VqaRecord(question_id=q["question_id"], image_id=q["image_id"], image_path=image_path,
                           question=q["question"], answers=[], labels=[], scores=[])
        ann = annotations.get(q["question_id"])
        if ann is not None:
            record.answers = [normalize_answer(a["answer"]) for a in ann["answers"]]
            record.raw_answers = [a["answer"] for a in ann["answers"]]
            record.multiple_choice_answer = normalize_answer(ann.get("multiple_choice_answer", ""))
            record.question_type = ann.get("question_type", "")
            record.answer_type = ann.get("answer_type", "")
            counts = collections.Counter(record.answers)
            for answer in sorted(counts, key=lambda a: vocab.index.get(a, -1)):
                if answer in vocab:
                    record.labels.append(vocab.index[answer])
                    record.scores.append(vqa_score(counts[answer]))
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
            answer = normalize_answer(qa["answer"])
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


def read_nlvr2(jsonl_path: PathLike, image_dir: Optional[PathLike] = None) -> List[Nlvr2Record]:
    """NLVR2 ``{train,dev,test1}.json`` (JSON lines).

    Images are ``image_dir[/directory]/<split>-<set>-<pair>-img{0,1}.png`` where the prefix is the
    identifier without its sentence index and ``directory`` exists only in train records.
    """
    what = "NLVR2 split file ({train,dev,test1}.json, JSON lines)"
    rows = read_jsonl(jsonl_path, what)
    records = []
    for lineno, row in enumerate(rows, 1):
        missing = [k for k in ("identifier", "sentence", "label") if k not in row]
        if missing:
            raise ValueError(f"{jsonl_path}: record {lineno} of {what} lacks {missing}")
        label = str(row["label"]).lower()
        if label not in ("true", "false"):
            raise ValueError(f"{jsonl_path}: record {lineno} has label {row['label']!r}; expected True/False")
        prefix = row["identifier"].rsplit("-", 1)[0]
        left = right = None
        if image_dir is not None:
            folder = Path(image_dir)
            if "directory" in row:
                folder = folder / str(row["directory"])
            left, right = str(folder / f"{prefix}-img0.png"), str(folder / f"{prefix}-img1.png")
        records.append(Nlvr2Record(identifier=row["identifier"], sentence=row["sentence"],
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


def read_coco_instances(json_path: PathLike, image_dir: Optional[PathLike] = None
                        ) -> Tuple[List[CocoImageRecord], List[Dict[str, Any]]]:
    """COCO ``instances_*.json`` as (records per image sorted by id, categories)."""
    what = "COCO instances file (annotations/instances_<split>.json)"
    data = read_json(json_path, what)
    _expect_keys(data, ["images", "annotations", "categories"], json_path, what)
    per_image: Dict[int, List[Dict[str, Any]]] = collections.defaultdict(list)
    for ann in data["annotations"]:
        per_image[ann["image_id"]].append(ann)
    records = []
    for image in sorted(data["images"], key=lambda im: im["id"]):
        path = str(Path(image_dir) / image["file_name"]) if image_dir is not None else None
        records.append(CocoImageRecord(image_id=image["id"], image_path=path, width=image["width"],
                                       height=image["height"], annotations=per_image.get(image["id"], [])))
    return records, list(data["categories"])


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
