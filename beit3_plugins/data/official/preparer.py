"""``data prepare``: the derived files microsoft/unilm ``beit3/datasets.py`` builds from the raw downloads.

Each builder writes what the official ``make_dataset_index`` of its benchmark writes, with the same file names,
keys, key order and JSON formatting, so the official fine-tuning code reads our folder and the goldens written by
the official code compare line for line (tests/project/test_official_data.py):

* VQA v2 (``coco/``): ``answer2label.txt`` (:func:`~.answers.official_answer_list`) and ``vqa.{train,val,test,
  test-dev,trainable_val,rest_val}.jsonl`` (question token ids, :func:`~.answers.official_vqa_targets`). The
  official code orders images by an unseeded shuffle and draws the 1000 held-out val images (``rest_val``) with
  another; here images follow their ids and the draw is :func:`~.answers.vqa_holdout_images` with a seed, the
  same draw the VQA task makes. So the released files were trained on a draw nobody can repeat (``docs/data.md``).
* NLVR2 (``nlvr2/``): ``nlvr2.{train,dev,test-P}.index.jsonl``.
* COCO (``coco/``): ``coco_captioning.{train,val,test}.jsonl`` and ``coco_retrieval.{train,val,test}.jsonl`` from
  the Karpathy split (train = train + restval).
* Flickr30k (``flickr30k/``): ``flickr30k.{train,val,test}.jsonl``.
* NoCaps (``nocaps/``): ``nocaps.{val,test}.jsonl``.
* ImageNet (``imagenet/``): ``imagenet.{train,val}.index.jsonl``; a flat ``val/`` (the download as it comes) is
  first sorted into class folders with the devkit's ground truth (``ILSVRC2012_devkit_t12.tar.gz``), read by
  torchvision as its ``ImageNet`` dataset reads it.

Nothing is built over missing or damaged raw files: each benchmark's raw files are checked first
(:func:`~.checker.check`, images looked up) and a problem raises :class:`~.checker.DataCheckError`.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Union

from beit3_plugins.data.official.answers import OFFICIAL_MIN_ANSWER_COUNT, official_vqa_targets, vqa_holdout_images
from beit3_plugins.data.official.checker import check
from beit3_plugins.data.official.layout import BENCHMARKS, benchmark
from beit3_plugins.data.readers import IMAGE_EXTENSIONS, AnswerVocab, read_json, read_jsonl
from beit3_plugins.io_checks import atomic_write

__all__ = ["prepare", "PrepareResult", "TEXT_BENCHMARKS", "sort_imagenet_val"]

PathLike = Union[str, os.PathLike]
TokenizeFn = Callable[[str], List[int]]
TEXT_BENCHMARKS = ("vqav2", "nlvr2", "coco_captioning", "coco_retrieval", "flickr30k")  # need the tokenizer


@dataclasses.dataclass
class PrepareResult:
    root: str
    written: Dict[str, int] = dataclasses.field(default_factory=dict)  # file (relative to root) -> lines
    notes: List[str] = dataclasses.field(default_factory=list)

    def format(self) -> str:
        lines = [f"{path}: {n} lines" for path, n in self.written.items()] + self.notes
        return "\n".join(lines)


def _write_jsonl(path: Path, items: Iterable[Dict[str, Any]], result: PrepareResult, root: Path) -> None:
    """One ``json.dumps(item)`` per line, as the official ``_write_data_into_jsonl``; written atomically, so a
    killed run leaves the old file or the whole new one."""
    lines = [json.dumps(item) + "\n" for item in items]
    atomic_write(str(path), lambda handle: handle.write("".join(lines).encode("utf-8")))
    result.written[path.relative_to(root).as_posix()] = len(lines)


# ---------------------------------------------------------------------------------------------- VQA v2
def _vqa(folder: Path, tokenize: TokenizeFn, result: PrepareResult, root: Path, min_count: int,
         holdout: int, seed: int) -> None:
    vqa = folder / "vqa"
    annotations = {s: vqa / f"v2_mscoco_{s}2014_annotations.json" for s in ("train", "val")}
    vocab = AnswerVocab.from_annotations([annotations["train"], annotations["val"]], min_count=min_count)
    answer_file = folder / "answer2label.txt"
    vocab.save(answer_file)
    result.written[answer_file.relative_to(root).as_posix()] = len(vocab)
    subtypes = {"train": "train2014", "val": "val2014", "test": "test2015", "test-dev": "test-dev2015"}
    split_items: Dict[str, List[Dict[str, Any]]] = {}
    for split, subtype in subtypes.items():
        questions = read_json(vqa / f"v2_OpenEnded_mscoco_{subtype}_questions.json", "VQA v2 questions")["questions"]
        targets = {}
        if split in annotations:
            for ann in read_json(annotations[split], "VQA v2 annotations")["annotations"]:
                targets[ann["question_id"]] = official_vqa_targets([a["answer"] for a in ann["answers"]],
                                                                   vocab.index)
        per_image: Dict[int, List[Dict[str, Any]]] = defaultdict(list)
        for q in questions:
            labels, scores = targets.get(q["question_id"], ([], []))
            if split in annotations and not labels:
                continue  # the official code drops training/val questions without an answer in the list
            per_image[q["image_id"]].append({"text_segment": tokenize(q["question"]), "labels": labels,
                                             "scores": scores, "qid": q["question_id"]})
        images = subtype if split in annotations else "test2015"
        items = []
        for image_id in sorted(per_image):
            path = f"{images}/COCO_{images}_{image_id:012d}.jpg"
            items += [{"image_path": path, **q} for q in per_image[image_id]]
        split_items[split] = items
        _write_jsonl(folder / f"vqa.{split}.jsonl", items, result, root)
    val_images = sorted({int(item["image_path"][-16:-4]) for item in split_items["val"]})
    held = vqa_holdout_images(val_images, holdout, seed)
    rest = [item for item in split_items["val"] if int(item["image_path"][-16:-4]) in held]
    trainable = [item for item in split_items["val"] if int(item["image_path"][-16:-4]) not in held]
    _write_jsonl(folder / "vqa.trainable_val.jsonl", trainable, result, root)
    _write_jsonl(folder / "vqa.rest_val.jsonl", rest, result, root)
    result.notes.append(f"vqav2: {len(vocab)} answers seen >= {min_count} times; rest_val = {len(held)} val images "
                        f"drawn with seed {seed} (the official draw is unseeded)")


# ---------------------------------------------------------------------------------------------- NLVR2
def _nlvr2(folder: Path, tokenize: TokenizeFn, result: PrepareResult, root: Path) -> None:
    for split, prefix, index in (("train", "images/train", "train"), ("dev", "dev", "dev"),
                                 ("test1", "test1", "test-P")):
        items = []
        for row in read_jsonl(folder / f"nlvr/nlvr2/data/{split}.json", "NLVR2 statements"):
            path = f"{prefix}/{row['directory']}" if "directory" in row else prefix
            path = f"{path}/{row['identifier'].rsplit('-', 1)[0]}"
            items.append({"image_path": path + "-img0.png", "image2_path": path + "-img1.png",
                          "text_segment": tokenize(row["sentence"]), "label": 1 if row["label"] == "True" else 0,
                          "identifier": row["identifier"]})
        _write_jsonl(folder / f"nlvr2.{index}.index.jsonl", items, result, root)


# ---------------------------------------------------------------------------------------------- Karpathy
_KARPATHY_SPLITS = (("train", ("train", "restval")), ("val", ("val",)), ("test", ("test",)))


def _karpathy_images(folder: Path) -> List[Dict[str, Any]]:
    return read_json(folder / "dataset_coco.json", "Karpathy split of COCO")["images"]


def _coco_captioning(folder: Path, tokenize: TokenizeFn, result: PrepareResult, root: Path) -> None:
    images = _karpathy_images(folder)
    for name, splits in _KARPATHY_SPLITS:
        items = []
        for image in images:
            if image["split"] not in splits:
                continue
            path = f"{image['filepath']}/{image['filename']}"
            if name == "train":
                items += [{"image_path": path, "text_segment": tokenize(s["raw"]), "image_id": image["cocoid"]}
                          for s in image["sentences"]]
            else:
                items.append({"image_path": path, "text_segment": None, "image_id": image["cocoid"]})
        _write_jsonl(folder / f"coco_captioning.{name}.jsonl", items, result, root)


def _coco_retrieval(folder: Path, tokenize: TokenizeFn, result: PrepareResult, root: Path) -> None:
    images = _karpathy_images(folder)
    for name, splits in _KARPATHY_SPLITS:
        items, seen = [], {}
        for image in images:
            if image["split"] not in splits:
                continue
            path = f"{image['filepath']}/{image['filename']}"
            index = seen.setdefault(path, len(seen))  # the image's position in the split
            items += [{"image_path": path, "text_segment": tokenize(s["raw"]), "image_id": index}
                      for s in image["sentences"]]
        _write_jsonl(folder / f"coco_retrieval.{name}.jsonl", items, result, root)


def _flickr30k(folder: Path, tokenize: TokenizeFn, result: PrepareResult, root: Path) -> None:
    per_split: Dict[str, List[Dict[str, Any]]] = defaultdict(list)
    seen: Dict[str, Dict[str, int]] = defaultdict(dict)
    for image in read_json(folder / "dataset_flickr30k.json", "Karpathy split of Flickr30k")["images"]:
        split, name = image["split"], image["filename"]
        if name in seen[split]:
            raise ValueError(f"{folder / 'dataset_flickr30k.json'}: image {name} listed twice in split {split}")
        index = seen[split].setdefault(name, len(seen[split]))
        per_split[split] += [{"image_path": f"flickr30k-images/{name}", "text_segment": tokenize(s["raw"]),
                              "image_id": index} for s in image["sentences"]]
    for split, items in per_split.items():
        _write_jsonl(folder / f"flickr30k.{split}.jsonl", items, result, root)


# ---------------------------------------------------------------------------------------------- NoCaps
def _nocaps(folder: Path, result: PrepareResult, root: Path) -> None:
    for split, name in (("val", "nocaps_val_4500_captions.json"), ("test", "nocaps_test_image_info.json")):
        images = read_json(folder / name, f"NoCaps {split} file")["images"]
        _write_jsonl(folder / f"nocaps.{split}.jsonl", ({"image_path": f"{split}/{image['file_name']}",
                                                        "text_segment": None, "image_id": image["id"]}
                                                       for image in images), result, root)


# ---------------------------------------------------------------------------------------------- ImageNet
def sort_imagenet_val(folder: PathLike) -> int:
    """Move the flat ``val/ILSVRC2012_val_*.JPEG`` download into ``val/<wnid>/`` by the devkit's ground truth;
    returns how many moved. torchvision reads the devkit (``ILSVRC2012_devkit_t12.tar.gz`` beside ``val/``, its
    md5 checked; ``meta.mat`` and the validation ground truth) as its ``ImageNet`` dataset does; the images are
    matched to the labels in sorted order, as its ``parse_val_archive`` matches them."""
    folder = Path(folder)
    devkit = folder / "ILSVRC2012_devkit_t12.tar.gz"
    if not devkit.is_file():
        raise FileNotFoundError(f"{devkit}: the ImageNet devkit (http://image-net.org/) is needed to sort the flat "
                                f"{folder / 'val'} into class folders")
    from torchvision.datasets.imagenet import load_meta_file, parse_devkit_archive

    try:
        parse_devkit_archive(str(folder))
    except RuntimeError as exc:  # torchvision's md5 check
        raise ValueError(f"{devkit}: {exc}") from None
    wnids = load_meta_file(str(folder))[1]
    flat = sorted(p for p in (folder / "val").iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if len(flat) != len(wnids):
        raise ValueError(f"{folder / 'val'}: {len(flat)} images but the devkit's ground truth has {len(wnids)} "
                         "labels; is the val download complete?")
    for path, wnid in zip(flat, wnids):
        target = folder / "val" / wnid / path.name
        target.parent.mkdir(exist_ok=True)
        os.replace(path, target)
    return len(flat)


def _imagenet_index(folder: Path, split: str, classes: List[str]) -> List[Dict[str, Any]]:
    items = []
    for label, name in enumerate(classes):
        class_dir = folder / split / name
        if not class_dir.is_dir():
            continue
        for parent, _, files in sorted(os.walk(class_dir, followlinks=True)):
            for file in sorted(files):
                items.append({"image_path": Path(parent, file).relative_to(folder).as_posix(), "label": label})
    return items


def _imagenet(folder: Path, result: PrepareResult, root: Path) -> None:
    classes_from = folder / "train" if (folder / "train").is_dir() else folder / "val"
    classes = sorted(entry.name for entry in os.scandir(classes_from) if entry.is_dir())
    if classes_from.name == "val":
        result.notes.append("imagenet: no train/ folder; classes are the sorted val class folders (the official "
                            "code reads them from train/, the same 1000 wnids on the full download)")
    for split in ("train", "val"):
        if (folder / split).is_dir():
            _write_jsonl(folder / f"imagenet.{split}.index.jsonl", _imagenet_index(folder, split, classes),
                         result, root)


# ---------------------------------------------------------------------------------------------- prepare
def _tokenizer(sentencepiece: Union[None, PathLike, Any]) -> Optional[TokenizeFn]:
    if sentencepiece is None:
        return None
    if hasattr(sentencepiece, "tokenize"):
        return sentencepiece.tokenize
    from beit3_plugins.tokenizer import Beit3Tokenizer

    return Beit3Tokenizer(str(sentencepiece)).tokenize  # = XLMRobertaTokenizer's tokenize + convert_tokens_to_ids


def prepare(root: PathLike, benchmarks: Optional[Sequence[str]] = None, *, sentencepiece: Any = None,
            min_answer_count: int = OFFICIAL_MIN_ANSWER_COUNT, holdout_images: int = 1000, seed: int = 0,
            decode: bool = False) -> PrepareResult:
    """Build the derived files of ``benchmarks`` (names; None = every benchmark whose folder exists).

    ``sentencepiece`` (``beit3.spm`` or a tokenizer) tokenises the text indexes; without it only the benchmarks
    that need no text are allowed (``nocaps``, ``imagenet``) and asking for another raises. ``min_answer_count``
    and ``holdout_images`` are the official 9 and 1000, lowered only for tiny data. Raw data is checked first
    (``decode=True`` also decodes every image) and a problem raises ``DataCheckError`` before anything is written.
    """
    root = Path(root)
    if benchmarks is None:
        benchmarks = [name for name, b in BENCHMARKS.items() if (root / b.folder).is_dir()]
        if not benchmarks:
            raise FileNotFoundError(f"{root}: no benchmark folder ({sorted({b.folder for b in BENCHMARKS.values()})})")
    names = list(dict.fromkeys(benchmarks))
    tokenize = _tokenizer(sentencepiece)
    needs_text = [n for n in names if n in TEXT_BENCHMARKS]
    if needs_text and tokenize is None:
        raise ValueError(f"{needs_text} write question/caption token ids: pass the sentencepiece model (beit3.spm, "
                         "--sentencepiece) or leave them out")
    result = PrepareResult(str(root))
    imagenet_val = root / "imagenet" / "val"
    if "imagenet" in names and imagenet_val.is_dir() and not any(p.is_dir() for p in imagenet_val.iterdir()):
        moved = sort_imagenet_val(root / "imagenet")
        result.notes.append(f"imagenet: sorted {moved} flat val images into class folders")
    report = check(root, names, decode=decode)
    for bench in report.benchmarks:
        bench.derived_damaged = []  # about to be rewritten: a cut file of a killed run is no reason to stop
    report.raise_for_problems()
    for name in names:
        folder = root / benchmark(name).folder
        if name == "vqav2":
            _vqa(folder, tokenize, result, root, min_answer_count, holdout_images, seed)
        elif name == "nlvr2":
            _nlvr2(folder, tokenize, result, root)
        elif name == "coco_captioning":
            _coco_captioning(folder, tokenize, result, root)
        elif name == "coco_retrieval":
            _coco_retrieval(folder, tokenize, result, root)
        elif name == "flickr30k":
            _flickr30k(folder, tokenize, result, root)
        elif name == "nocaps":
            _nocaps(folder, result, root)
        elif name == "imagenet":
            _imagenet(folder, result, root)
    return result


def cli_main(argv: Optional[Sequence[str]] = None) -> int:
    """``beit3-plugins data prepare ROOT [--benchmark NAME ...] --sentencepiece beit3.spm``."""
    import argparse

    from beit3_plugins.data.official.checker import DataCheckError

    parser = argparse.ArgumentParser(prog="beit3-plugins data prepare", description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="data root: coco/, nlvr2/, flickr30k/, nocaps/, imagenet/ below it")
    parser.add_argument("--benchmark", "-b", action="append", metavar="NAME",
                        help=f"repeatable; one of {sorted(BENCHMARKS)} (default: every folder present)")
    parser.add_argument("--sentencepiece", help="the sentencepiece model that tokenises text (beit3.spm)")
    parser.add_argument("--min-answer-count", type=int, default=OFFICIAL_MIN_ANSWER_COUNT,
                        help="VQA answers kept when seen this often (official: 9; lower only for tiny data)")
    parser.add_argument("--holdout-images", type=int, default=1000, help="VQA val images held out (rest_val)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out VQA val images")
    parser.add_argument("--decode", action="store_true", help="decode every image in the check first")
    args = parser.parse_args(argv)
    try:
        result = prepare(args.root, args.benchmark, sentencepiece=args.sentencepiece,
                         min_answer_count=args.min_answer_count, holdout_images=args.holdout_images,
                         seed=args.seed, decode=args.decode)
    except (DataCheckError, ValueError, FileNotFoundError, KeyError) as exc:
        print(f"data prepare: {exc}")
        return 1
    print(result.format())
    return 0
