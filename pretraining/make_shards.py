"""``beit3-plugins make-shards``: write pretraining shards from the formats small data comes in.

Pairs (COCO captions / Karpathy json + image root) become WebDataset tars in img2dataset's layout
(``KEY.jpg`` + ``KEY.txt`` + ``KEY.json`` with the caption and source path), image folders become image
tars, text files become plain-text shards of ``--samples-per-shard`` lines. The tars are written by
``webdataset.ShardWriter`` (the library's own writer, so the files are what its readers and
img2dataset users expect); member names are the sample keys only, never source paths, so a shard
carries no directory component. ``--world DIR`` does all three for the synthetic data world and holds
out the last ``--hold-out-lines`` text lines in ``text-valid.txt``.

``--fairseq-dict SPM`` writes the ``dict.txt`` that makes ``fairseq-preprocess`` ids equal the tokenizer's.
For real corpora use img2dataset (``--output_format webdataset``) and ``fairseq-preprocess``; see
docs/pretraining.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Tuple

from beit3_plugins.data.readers import read_text_lines

from .data import list_images, read_pairs

__all__ = ["write_pair_shards", "write_image_shards", "write_text_shards", "write_fairseq_dict", "make_world_shards",
           "cli_main"]

logger = logging.getLogger(__name__)


def _pattern(names: Sequence[str]) -> str:
    """Brace pattern naming ``names`` (written as prefix-00000.ext .. prefix-0000N.ext)."""
    first, last = Path(names[0]), Path(names[-1])
    stem, ext = first.name.rsplit("-", 1)[0], "".join(first.suffixes)
    lo, hi = first.name[len(stem) + 1:-len(ext)], last.name[len(stem) + 1:-len(ext)]
    return str(first.parent / f"{stem}-{{{lo}..{hi}}}{ext}") if len(names) > 1 else str(first)


def _write_tars(out: Path, prefix: str, samples: Iterable[Dict[str, object]], per_shard: int) -> List[str]:
    import webdataset as wds

    out.mkdir(parents=True, exist_ok=True)
    pattern = str(out / f"{prefix}-%05d.tar")
    with wds.ShardWriter(pattern, maxcount=per_shard, verbose=0) as writer:
        for sample in samples:
            writer.write(sample)
        count = writer.shard
    return [pattern % i for i in range(count)]


def _image_ext(path: str) -> str:
    ext = Path(path).suffix.lower().lstrip(".")
    return "jpg" if ext == "jpeg" else ext


def write_pair_shards(pairs: Sequence[Tuple[str, str]], out: Path, per_shard: int, prefix: str = "pairs") -> List[str]:
    """One sample per (image, caption): image bytes unchanged, caption in ``.txt`` and ``.json``."""
    def samples():
        for i, (image, caption) in enumerate(pairs):
            key = f"{i:09d}"
            yield {"__key__": key, _image_ext(image): Path(image).read_bytes(), "txt": caption,
                   "json": json.dumps({"key": key, "caption": caption, "source": os.path.basename(image)})}
    return _write_tars(out, prefix, samples(), per_shard)


def write_image_shards(paths: Sequence[str], out: Path, per_shard: int, prefix: str = "images") -> List[str]:
    def samples():
        for i, image in enumerate(paths):
            yield {"__key__": f"{i:09d}", _image_ext(image): Path(image).read_bytes()}
    return _write_tars(out, prefix, samples(), per_shard)


def write_text_shards(lines: Sequence[str], out: Path, per_shard: int, prefix: str = "text") -> List[str]:
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for start in range(0, len(lines), per_shard):
        name = out / f"{prefix}-{start // per_shard:05d}.txt"
        name.write_text("".join(line.replace("\n", " ") + "\n" for line in lines[start:start + per_shard]),
                        encoding="utf-8")
        names.append(str(name))
    return names


def write_fairseq_dict(spm_model: str, path: Path) -> Path:
    """fairseq ``dict.txt`` whose ids are the tokenizer's (piece of fairseq id 4, 5, ... in order), for
    ``fairseq-preprocess --srcdict`` on text encoded into pieces (``spm_encode --output_format=piece``)."""
    from beit3_plugins.tokenizer import Beit3Tokenizer

    tok = Beit3Tokenizer(spm_model)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{tok.id_to_piece(i)} 1\n" for i in range(4, tok.num_pieces + 1)), encoding="utf-8")
    return path


def make_world_shards(world: Path, out: Path, per_shard: int, hold_out_lines: int = 60) -> Dict[str, str]:
    """Shards of the data world's training data (Karpathy train+restval pairs, imagenet/train and
    coco/train2014 images, text minus the held-out tail); returns kind -> brace pattern."""
    pairs = read_pairs(str(world / "coco" / "dataset_coco.json"), str(world / "coco"), splits=("train", "restval"))
    images = list_images([str(world / "imagenet" / "train"), str(world / "coco" / "train2014")])
    lines = read_text_lines(world / "text" / "corpus.txt")
    if len(lines) <= hold_out_lines:
        raise ValueError(f"{world}/text/corpus.txt has {len(lines)} lines: too few to hold out {hold_out_lines}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "text-valid.txt").write_text("".join(line + "\n" for line in lines[-hold_out_lines:]), encoding="utf-8")
    return {"pair": _pattern(write_pair_shards(pairs, out, per_shard)),
            "image": _pattern(write_image_shards(images, out, per_shard)),
            "text": _pattern(write_text_shards(lines[:-hold_out_lines], out, per_shard)),
            "valid_text": str(out / "text-valid.txt")}


def cli_main(argv=None) -> int:
    """Write pretraining shards (WebDataset tars, text shards) from captions, image folders and text files."""
    parser = argparse.ArgumentParser(prog="beit3-plugins make-shards", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--samples-per-shard", type=int, default=10000, help="samples (text: lines) per shard")
    parser.add_argument("--world", help="data world directory: pairs, images and text shards")
    parser.add_argument("--hold-out-lines", type=int, default=60, help="with --world: held-out text lines")
    parser.add_argument("--captions", help="COCO captions_*.json or Karpathy dataset_*.json -> pairs-*.tar")
    parser.add_argument("--image-root", help="image root of --captions")
    parser.add_argument("--splits", default="train,restval", help="Karpathy splits for --captions")
    parser.add_argument("--image-folder", action="append", default=[], help="image folder -> images-*.tar (repeatable)")
    parser.add_argument("--text", action="append", default=[], help="text file, one sentence a line -> text-*.txt")
    parser.add_argument("--fairseq-dict", metavar="SPM", help="write OUT/dict.txt for fairseq-preprocess --srcdict")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s | %(name)s | %(message)s")
    if args.samples_per_shard <= 0:
        parser.error("--samples-per-shard must be positive")
    out = Path(args.out)
    written: Dict[str, str] = {}
    if args.world:
        written.update(make_world_shards(Path(args.world), out, args.samples_per_shard, args.hold_out_lines))
    if args.captions:
        if not args.image_root:
            parser.error("--captions needs --image-root")
        pairs = read_pairs(args.captions, args.image_root, splits=[s for s in args.splits.split(",") if s])
        written["pair"] = _pattern(write_pair_shards(pairs, out, args.samples_per_shard))
    if args.image_folder:
        written["image"] = _pattern(write_image_shards(list_images(args.image_folder), out, args.samples_per_shard))
    if args.text:
        lines = [line for path in args.text for line in read_text_lines(path)]
        written["text"] = _pattern(write_text_shards(lines, out, args.samples_per_shard))
    if args.fairseq_dict:
        written["fairseq_dict"] = str(write_fairseq_dict(args.fairseq_dict, out / "dict.txt"))
    if not written:
        parser.error("nothing to write: give --world, --captions, --image-folder or --text")
    for kind, pattern in written.items():
        print(f"{kind}: {pattern}")
    return 0
