"""``beit3-plugins predict <task> --model NAME|PATH ...``: one pipeline call, the result printed as JSON."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

__all__ = ["predict_main"]


def _parser() -> argparse.ArgumentParser:
    from . import PIPELINES

    p = argparse.ArgumentParser(prog="beit3-plugins predict", description="run an inference pipeline, print JSON")
    names = PIPELINES.names()
    p.add_argument("task", choices=names + sorted(t.replace("-", "_") for t in names if "-" in t))
    p.add_argument("--model", required=True, help="zoo name (beit3-plugins predict --list) or checkpoint path")
    p.add_argument("--like", help="zoo entry whose settings a local checkpoint shares")
    p.add_argument("--tokenizer", help="tokenizer file replacing the entry's (beit3.spm, vocab.txt)")
    p.add_argument("--image", nargs="+", default=[], help="image file(s); nlvr2: left then right")
    p.add_argument("--question", nargs="+", default=[], help="vqa: one question, or one per image")
    p.add_argument("--text", nargs="+", default=[], help="text-embedding / retrieval / nlvr2 sentence")
    p.add_argument("--classes", nargs="+", default=[], help="zero-shot-classification class names")
    p.add_argument("--templates", nargs="+", help="zero-shot prompt templates with '{}' for the class name")
    p.add_argument("--answers", help="vqa answer list (answer2label.txt or JSON list)")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--beam-size", type=int)
    p.add_argument("--length-penalty", type=float)
    p.add_argument("--max-length", type=int)
    p.add_argument("--device")
    p.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16 | auto")
    p.add_argument("--batch-size", type=int, default=8)
    return p


def _need(args, *names: str) -> None:
    missing = [f"--{n.replace('_', '-')}" for n in names if not getattr(args, n)]
    if missing:
        raise SystemExit(f"beit3-plugins predict {args.task}: {' and '.join(missing)} required")


def predict_main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    from . import pipeline

    task = args.task.replace("_", "-")
    extra = {"answers": args.answers} if task == "vqa" and args.answers else {}
    pipe = pipeline(task, model=args.model, like=args.like, tokenizer=args.tokenizer, device=args.device,
                    dtype=args.dtype, batch_size=args.batch_size, **extra)
    if task == "vqa":
        _need(args, "image", "question")
        result = pipe(args.image, args.question, top_k=args.top_k)
    elif task == "captioning":
        _need(args, "image")
        result = pipe(args.image, beam_size=args.beam_size, length_penalty=args.length_penalty,
                      max_length=args.max_length)
    elif task == "image-embedding":
        _need(args, "image")
        result = pipe(args.image).tolist()
    elif task == "text-embedding":
        _need(args, "text")
        result = pipe(args.text).tolist()
    elif task == "retrieval":
        _need(args, "image", "text")
        result = pipe(args.image, args.text, top_k=args.top_k)
    elif task == "zero-shot-classification":
        _need(args, "image", "classes")
        kwargs = {"templates": args.templates} if args.templates else {}
        result = pipe(args.image, args.classes, top_k=args.top_k, **kwargs)
    elif task == "nlvr2":
        _need(args, "image", "text")
        if len(args.image) != 2 or len(args.text) != 1:
            raise SystemExit("beit3-plugins predict nlvr2: give --image LEFT RIGHT and one --text sentence")
        result = pipe(args.image[0], args.image[1], args.text[0])
    elif task == "image-classification":
        _need(args, "image")
        result = pipe(args.image, top_k=args.top_k)
    else:  # a plugin's pipeline: images in, its JSON-ready answer out
        _need(args, "image")
        result = pipe(args.image)
        result = result.tolist() if hasattr(result, "tolist") else result
    json.dump({"task": task, "model": args.model, "result": result}, sys.stdout)
    sys.stdout.write("\n")
    return 0
