"""The caption grammar: true sentences about a scene (never left/right inside an image, so flips keep them
true), and the Karpathy-style tokens the caption files carry.
"""
from __future__ import annotations

from typing import List, Sequence

import numpy as np

from .scene import ROWS, Scene


__all__ = ["scene_captions", "karpathy_tokens", "count_phrase", "NUMBER_WORDS", "CAPTION_GRAMMARS"]

# the grammars of scene_captions and how many templates each has (the most distinct captions of one image)
CAPTION_GRAMMARS = {"mixed": 8, "visible": 5}

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _join(phrases: Sequence[str]) -> str:
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def count_phrase(n: int, noun: str = "shape") -> str:
    return f"{NUMBER_WORDS[n]} {noun}" + ("" if n == 1 else "s")


def scene_captions(scene: Scene, rng: np.random.Generator, n: int = 5, grammar: str = "mixed") -> List[str]:
    """``n`` distinct true captions of ``scene`` drawn from a small grammar: ``"mixed"`` (8 templates, some of
    them generic: counts, the first shape, frames a blind writer can reuse) or ``"visible"`` (5 templates that
    each name every shape's colour and kind, in reading order, so one caption fits few scenes; with all five
    per image the frames score nothing in CIDEr, whose idf is zero for n-grams every image's references share)."""
    if grammar == "visible":
        ordered = sorted(scene.shapes, key=lambda s: (s.row, s.cx))
        full = [s.phrase() for s in ordered]
        short = [s.phrase(with_size=False) for s in ordered]
        templates = [
            _join(short),
            f"a picture of {_join(short)}",
            _join(full),
            f"an image of {_join(full)}",
            f"a drawing of {_join(short)}",
        ]
        return _pick(templates, rng, n)
    if grammar not in CAPTION_GRAMMARS:
        raise ValueError(f"caption grammar must be {' or '.join(map(repr, CAPTION_GRAMMARS))}, got {grammar!r}")
    full = [s.phrase() for s in scene.shapes]
    short = [s.phrase(with_size=False) for s in scene.shapes]
    first = scene.shapes[0]
    background = "a textured background" if scene.textured else "a plain background"
    templates = [
        _join(full),
        f"a picture of {_join(short)}",
        f"there {'is' if scene.count == 1 else 'are'} {count_phrase(scene.count)} in the image",
        f"{_join(full)} on {background}",
        f"an image with {count_phrase(scene.count)}: {_join(short)}",
        f"{first.phrase()} {ROWS[first.row]}",
        f"{_join(short)} drawn on {background}",
        f"{count_phrase(scene.count)}, one of them is {first.phrase(with_size=False)}",
    ]
    return _pick(templates, rng, n)


def _pick(templates: Sequence[str], rng: np.random.Generator, n: int) -> List[str]:
    """The first ``n`` distinct templates in a random order."""
    order = rng.permutation(len(templates))
    out: List[str] = []
    for idx in order:
        if templates[idx] not in out:
            out.append(templates[idx])
        if len(out) == n:
            break
    return out


def karpathy_tokens(sentence: str) -> List[str]:
    return "".join(c if c.isalnum() or c.isspace() else " " for c in sentence.lower()).split()
