"""The official BEiT-3 data procedures, reproduced once each: the download layout of every fine-tuning
benchmark (:mod:`.layout`), ``data check`` (:func:`check` -> :class:`DataReport`), ``data prepare``
(:func:`prepare`: the derived files microsoft/unilm ``beit3/datasets.py`` ``make_dataset_index`` builds) and the
two VQA answer normalisations plus the official answer list (:mod:`.answers`).

``check`` and ``prepare`` load lazily: :mod:`beit3_plugins.data.readers` imports :mod:`.answers`.
"""
import importlib
from typing import Any, Optional, Sequence

from .answers import (OFFICIAL_MIN_ANSWER_COUNT, beit3_normalize_word, official_answer_list, official_vqa_targets,
                      vqa_eval_normalize, vqa_target_score)

_LAZY = {
    "check": "checker", "DataReport": "checker", "BenchmarkReport": "checker", "FileStatus": "checker",
    "DataCheckError": "checker", "referenced_images": "checker",
    "prepare": "preparer", "PrepareResult": "preparer",
    "BENCHMARKS": "layout", "Benchmark": "layout", "RawFile": "layout", "benchmark": "layout",
}

__all__ = ["OFFICIAL_MIN_ANSWER_COUNT", "beit3_normalize_word", "official_answer_list", "official_vqa_targets",
           "vqa_eval_normalize", "vqa_target_score", "cli_main", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def cli_main(argv: Optional[Sequence[str]] = None) -> int:
    """``beit3-plugins data {check,prepare} ...``."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    actions = {"check": "checker", "prepare": "preparer"}
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in actions:
        print("usage: beit3-plugins data {check,prepare} ROOT [options]\n"
              "  check    which files each benchmark needs in the official layout: present (counts), missing\n"
              "           (official download link), damaged; exits 1 naming every problem\n"
              "  prepare  build the derived files of the official make_dataset_index (answer2label.txt, the\n"
              "           jsonl indexes, ImageNet val class folders)")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return importlib.import_module(f"{__name__}.{actions[argv[0]]}").cli_main(argv[1:])
