"""``beit3-plugins predict <task> --model NAME|PATH ...``: one pipeline call, the result printed as JSON."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

__all__ = ["predict_main"]


def _parser() -> argparse.ArgumentParser:
    from . import PIPELINES

    p = argparse.ArgumentParser(prog="beit3-plugins predict", description="run an inference pipeline, print JSON")
    names = PIPELINES.names()
    p.add_argument("task", nargs="?", choices=names + sorted(t.replace("-", "_") for t in names if "-" in t))
    p.add_argument("--list", action="store_true", help="print the zoo names (of the task's weights, with a task)")
    p.add_argument("--model", help="zoo name (beit3-plugins predict --list) or checkpoint path")
    p.add_argument("--like", help="zoo entry whose settings a local checkpoint shares")
    p.add_argument("--tokenizer", help="tokenizer file replacing the entry's (beit3.spm, vocab.txt)")
    p.add_argument("--image", nargs="+", default=[], help="image file(s); nlvr2: left then right")
    p.add_argument("--question", nargs="+", default=[], help="vqa: one question, or one per image")
    p.add_argument("--text", nargs="+", default=[], help="text-embedding / retrieval / nlvr2 sentence")
    p.add_argument("--classes", nargs="+", default=[], help="zero-shot-classification class names")
    p.add_argument("--templates", nargs="+", help="zero-shot prompt templates with '{}' for the class name")
    p.add_argument("--answers", help="vqa answer list (answer2label.txt or JSON list)")
    p.add_argument("--class-names", help="image-classification: class names, one per line, in the head's order")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--beam-size", type=int)
    p.add_argument("--length-penalty", type=float)
    p.add_argument("--max-length", type=int)
    p.add_argument("--device")
    p.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16 | auto")
    p.add_argument("--batch-size", type=int, default=8)
    return p


# the inputs each task needs (checked before a model is built or downloaded); a plugin's pipeline takes images
NEEDS = {"vqa": ("image", "question"), "captioning": ("image",), "image-embedding": ("image",),
         "text-embedding": ("text",), "retrieval": ("image", "text"), "zero-shot-classification": ("image", "classes"),
         "nlvr2": ("image", "text"), "image-classification": ("image",)}


def _check_args(parser: argparse.ArgumentParser, args, task: str) -> None:
    """Every argument error, before anything is built: missing inputs, missing image files, counts < 1."""
    missing = [f"--{n.replace('_', '-')}" for n in ("model",) + NEEDS.get(task, ("image",)) if not getattr(args, n)]
    if missing:
        parser.error(f"{task}: {' and '.join(missing)} required")
    if task == "nlvr2" and (len(args.image) != 2 or len(args.text) != 1):
        parser.error("nlvr2: give --image LEFT RIGHT and one --text sentence")
    for name in ("top_k", "beam_size", "max_length", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    absent = [path for path in args.image if not os.path.isfile(path)]
    if absent:
        parser.error(f"image file(s) not found: {', '.join(absent)}")
    for option in ("answers", "class_names", "tokenizer"):
        path = getattr(args, option)
        if path is not None and not os.path.isfile(path):
            parser.error(f"--{option.replace('_', '-')} {path}: file not found")
    if args.class_names and task != "image-classification":
        parser.error("--class-names is for image-classification")


def _list(task: Optional[str]) -> None:
    """The zoo names (and task kinds), only those the task's pipeline runs when a task is given."""
    from beit3_plugins.zoo import list_pretrained

    from . import PIPELINES

    kinds = PIPELINES[task].task_kinds if task else ()
    for name, kind in list_pretrained(as_tuples=True):
        if not kinds or kind in kinds:
            print(f"{name}\t{kind}")


def predict_main(argv: Optional[Sequence[str]] = None) -> int:
    """Run an inference pipeline (vqa, captioning, retrieval, ...) on files and print JSON."""
    parser = _parser()
    args = parser.parse_args(argv)
    task = args.task.replace("_", "-") if args.task else None
    if args.list:
        _list(task)
        return 0
    if task is None:
        parser.error("give a task (or --list)")
    _check_args(parser, args, task)
    from . import pipeline

    extra = {"answers": args.answers} if task == "vqa" and args.answers else {}
    if args.class_names:
        extra["class_names"] = args.class_names
    pipe = pipeline(task, model=args.model, like=args.like, tokenizer=args.tokenizer, device=args.device,
                    dtype=args.dtype, batch_size=args.batch_size, **extra)
    if task == "vqa":
        result = pipe(args.image, args.question, top_k=args.top_k)
    elif task == "captioning":
        result = pipe(args.image, beam_size=args.beam_size, length_penalty=args.length_penalty,
                      max_length=args.max_length)
    elif task == "image-embedding":
        result = pipe(args.image).tolist()
    elif task == "text-embedding":
        result = pipe(args.text).tolist()
    elif task == "retrieval":
        result = pipe(args.image, args.text, top_k=args.top_k)
    elif task == "zero-shot-classification":
        kwargs = {"templates": args.templates} if args.templates else {}
        result = pipe(args.image, args.classes, top_k=args.top_k, **kwargs)
    elif task == "nlvr2":
        result = pipe(args.image[0], args.image[1], args.text[0])
    elif task == "image-classification":
        result = pipe(args.image, top_k=args.top_k)
    else:  # a plugin's pipeline: images in, its JSON-ready answer out
        result = pipe(args.image)
        result = result.tolist() if hasattr(result, "tolist") else result
    json.dump({"task": task, "model": args.model, "result": result}, sys.stdout)
    sys.stdout.write("\n")
    return 0
