"""NLVR2 jsonl records and image pairs: ordinary statement splits and the optional contrast evaluation.
"""
from __future__ import annotations

import json
from typing import Any, Callable, Dict, List, Tuple

import numpy as np


from .language import count_phrase
from .scene import COLORS, KINDS, Scene, render_scene
from .writer import FormatWriter, new_scene


_NLVR2_STATEMENTS: List[Tuple[str, Callable[[Scene, Scene, Dict[str, Any]], bool]]] = [
    ("the left image has more shapes than the right image", lambda l, r, a: l.count > r.count),
    ("the right image has more shapes than the left image", lambda l, r, a: r.count > l.count),
    ("both images contain the same number of shapes", lambda l, r, a: l.count == r.count),
    ("both images contain a {color} shape",
     lambda l, r, a: l.count_where(color=a["color"]) > 0 and r.count_where(color=a["color"]) > 0),
    ("at least one image contains a {color} {kind}",
     lambda l, r, a: l.count_where(a["kind"], a["color"]) + r.count_where(a["kind"], a["color"]) > 0),
    ("the left image contains exactly {n_shapes}", lambda l, r, a: l.count == a["n"]),
    ("there {be} {n_kinds} in total",
     lambda l, r, a: l.count_where(kind=a["kind"]) + r.count_where(kind=a["kind"]) == a["n"]),
    ("the left image contains a {kind} and the right image does not",
     lambda l, r, a: l.count_where(kind=a["kind"]) > 0 and r.count_where(kind=a["kind"]) == 0),
    ("every shape in the right image is {color}",
     lambda l, r, a: r.count_where(color=a["color"]) == r.count),
]

# Where one colour (nlvr2_presence_color) is present: left / right / both / either image. The mixed
# templates need counting, shape identity and binding a colour word to image colours, which a tiny model
# trained from scratch on a CPU does not get off the ground; these four only need one visual feature
# per image combined as the sentence says, so the NLVR2 pipeline can show that it learns.
_NLVR2_PRESENCE_STATEMENTS: List[Tuple[str, Callable[[Scene, Scene, Dict[str, Any]], bool]]] = [
    ("the left image contains a {color} shape", lambda l, r, a: l.count_where(color=a["color"]) > 0),
    ("the right image contains a {color} shape", lambda l, r, a: r.count_where(color=a["color"]) > 0),
    ("both images contain a {color} shape",
     lambda l, r, a: l.count_where(color=a["color"]) > 0 and r.count_where(color=a["color"]) > 0),
    ("at least one image contains a {color} shape",
     lambda l, r, a: l.count_where(color=a["color"]) + r.count_where(color=a["color"]) > 0),
]


def write_nlvr2(w: FormatWriter) -> None:
    rng = w.rng("nlvr2")
    w.files["nlvr2_root"] = "nlvr2"
    for split, n_sets in (("train", w.cfg.nlvr2_train_sets), ("dev", w.cfg.nlvr2_eval_sets),
                          ("test1", w.cfg.nlvr2_eval_sets)):
        image_dir = "nlvr2/images/train" if split == "train" else f"nlvr2/{split}"
        w.files[f"nlvr2_images_{split}"] = image_dir
        if split != "train" and w.cfg.nlvr2_eval_contrast:
            records = _nlvr2_contrast_records(w, rng, split, image_dir, n_sets)
        else:
            records = _nlvr2_statement_records(w, rng, split, image_dir, n_sets)
        lines = [json.dumps(record, sort_keys=True) for record in records]
        # the statements sit in the lil-lab/nlvr clone (nlvr2/nlvr/), as the official setup lays them out
        w.mark(f"nlvr2_{split}", f"nlvr2/nlvr/nlvr2/data/{split}.json").write_text("\n".join(lines) + "\n")
        w.counts[f"nlvr2_{split}"] = len(lines)
        w.counts[f"nlvr2_{split}_true"] = sum(record["label"] == "True" for record in records)


def _nlvr2_record(identifier: str, sentence: str, label: bool, urls: Dict[str, str]) -> Dict[str, Any]:
    return {"identifier": identifier, "sentence": sentence, "label": str(label), "synset": "shape",
            "query": "shapes", "writer": "world", "validation": {}, "extra_validations": {}, **urls}


def _nlvr2_pair_images(w: FormatWriter, folder: str, prefix: str, left: Scene, right: Scene) -> Dict[str, str]:
    """Render an image pair as NLVR2 names it (``<prefix>-img0/1.png``); returns the records' url fields."""
    urls = {}
    for side, scene in (("left", left), ("right", right)):
        url = f"{folder}/{prefix}-img{0 if side == 'left' else 1}.png"
        w.image(url, render_scene(scene, w.cfg.image_size)[0])
        urls[f"{side}_url"] = url
    return urls


def _nlvr2_statement_records(w: FormatWriter, rng: np.random.Generator, split: str, image_dir: str,
                             n_sets: int) -> List[Dict[str, Any]]:
    """One statement per set, judged on pairs_per_set image pairs, half of them true."""
    statements = _NLVR2_PRESENCE_STATEMENTS if w.cfg.nlvr2_statements == "presence" else _NLVR2_STATEMENTS
    records = []
    for set_id in range(n_sets):
        template, predicate = statements[int(rng.integers(len(statements)))]
        kind = KINDS[int(rng.integers(len(KINDS)))]
        n = int(rng.integers(1, 4))
        args = {"color": list(COLORS)[int(rng.integers(len(COLORS)))], "kind": kind, "n": n,
                "n_shapes": count_phrase(n), "n_kinds": count_phrase(n, kind),
                "be": "is" if n == 1 else "are"}
        if w.cfg.nlvr2_statements == "presence":
            args["color"] = w.cfg.nlvr2_presence_color
        sentence = template.format(**args)
        labels = [p % 2 == 0 for p in range(w.cfg.nlvr2_pairs_per_set)]
        for pair, label in enumerate(labels):
            for _attempt in range(1000):
                left, right = new_scene(w, rng), new_scene(w, rng)
                if predicate(left, right, args) == label:
                    break
            else:  # pragma: no cover - every statement is satisfiable both ways
                raise RuntimeError(f"could not sample a {label} pair for {sentence!r}")
            prefix = f"{split}-{set_id}-{pair}"
            folder, extra = image_dir, {}
            if split == "train":
                extra["directory"] = set_id % max(1, w.cfg.nlvr2_train_directories)
                folder = f"{image_dir}/{extra['directory']}"
            urls = _nlvr2_pair_images(w, folder, prefix, left, right)
            records.append({**_nlvr2_record(f"{prefix}-0", sentence, label, urls), **extra})
    return records


def _nlvr2_contrast_records(w: FormatWriter, rng: np.random.Generator, split: str, image_dir: str,
                            n_sets: int) -> List[Dict[str, Any]]:
    """Image pairs with the presence colour in exactly one image, each under the left- and the right-image
    statement: the two records share their images and have opposite labels."""
    args = {"color": w.cfg.nlvr2_presence_color}
    sides = _NLVR2_PRESENCE_STATEMENTS[:2]   # "the left image contains ...", "the right image contains ..."
    records = []
    for set_id in range(n_sets):
        for pair in range(w.cfg.nlvr2_pairs_per_set // 2):
            for _attempt in range(1000):
                left, right = new_scene(w, rng), new_scene(w, rng)
                if sides[0][1](left, right, args) != sides[1][1](left, right, args):
                    break
            else:  # pragma: no cover - scenes without and with the colour are both common
                raise RuntimeError(f"could not sample a pair with {args['color']} in exactly one image")
            prefix = f"{split}-{set_id}-{pair}"
            urls = _nlvr2_pair_images(w, image_dir, prefix, left, right)
            for sentence_id, (template, holds) in enumerate(sides):
                records.append(_nlvr2_record(f"{prefix}-{sentence_id}", template.format(**args),
                                             holds(left, right, args), urls))
    return records
