"""Soft-NMS at Cascade R-CNN's test-time scale: ``python -m bench.soft_nms`` prints a markdown table.

Cases: N boxes spread over 80 classes in one image (the boxes a Cascade R-CNN head hands to NMS).
Implementations, all on the same boxes, round-robin (``bench.common.interleaved_times``), medians:

* ``all boxes at once``: one soft-NMS over every box of the image with classes kept apart by coordinate
  offsets (the batched form before issue 14): quadratic in all boxes.
* ``ours, torch``: ``batched_soft_nms(backend="torch")``, per class, the pure-torch loop.
* ``ours, mmcv``: ``batched_soft_nms(backend="mmcv")``, per class through ``mmcv.ops.soft_nms``.
* ``mmcv per class``: ``mmcv.ops.soft_nms`` called directly per class (the reference the issue measured).

Before timing, the kept boxes and scores of every implementation are checked equal to ``mmcv per class``
(scores to 1e-5; 1e-3 for the offset form, whose IoUs lose float32 precision at large coordinates).
"""
from __future__ import annotations

import argparse
from typing import Dict, List, Sequence

import torch

from bench.common import interleaved_times, machine_info, median


def random_detections(n: int, num_classes: int = 80, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=gen) * 800
    wh = torch.rand(n, 2, generator=gen) * 120 + 4
    return torch.cat([xy, xy + wh], 1), torch.rand(n, generator=gen), torch.randint(0, num_classes, (n,), generator=gen)


def _all_boxes_at_once(boxes, scores, classes):
    from beit3_plugins.detection.soft_nms import _soft_nms_torch

    offsets = classes.to(boxes) * (boxes.max() - boxes.min() + 1)
    keep, kept = _soft_nms_torch(boxes + offsets[:, None], scores, "linear", 0.3, 0.5, 1e-3)
    order = torch.argsort(kept, descending=True, stable=True)
    return keep[order], kept[order]


def _mmcv_per_class(boxes, scores, classes):
    from mmcv.ops import soft_nms

    keeps, kept = [], []
    for c in classes.unique():
        members = (classes == c).nonzero().squeeze(1)
        dets, inds = soft_nms(boxes[members], scores[members], iou_threshold=0.3, sigma=0.5, min_score=1e-3,
                              method="linear")
        keeps.append(members[inds.long()])
        kept.append(dets[:, 4])
    keep, kept = torch.cat(keeps), torch.cat(kept)
    order = torch.argsort(kept, descending=True, stable=True)
    return keep[order], kept[order]


def _as_dict(result) -> Dict[int, float]:
    keep, kept = result
    return dict(zip(keep.tolist(), kept.tolist()))


def run(sizes: Sequence[int], repeats: int, skip_quadratic_above: int) -> List[str]:
    from beit3_plugins.detection import batched_soft_nms

    rows = ["| boxes (80 classes) | all boxes at once | ours, torch | ours, mmcv | mmcv per class |",
            "|---:|---:|---:|---:|---:|"]
    for n in sizes:
        boxes, scores, classes = random_detections(n)
        fns = {
            "ours, torch": lambda: batched_soft_nms(boxes, scores, classes, backend="torch"),
            "ours, mmcv": lambda: batched_soft_nms(boxes, scores, classes, backend="mmcv"),
            "mmcv per class": lambda: _mmcv_per_class(boxes, scores, classes),
        }
        if n <= skip_quadratic_above:
            fns["all boxes at once"] = lambda: _all_boxes_at_once(boxes, scores, classes)
        reference = _as_dict(fns["mmcv per class"]())
        for name, fn in fns.items():
            got = _as_dict(fn())
            # the offset trick computes IoUs at coordinates ~1e5, where float32 loses ~1e-4 of the score
            tol = 1e-3 if name == "all boxes at once" else 1e-5
            if got.keys() != reference.keys() or any(abs(got[k] - reference[k]) > tol for k in got):
                raise AssertionError(f"{name} keeps other boxes or scores than mmcv at N={n}")
        times = interleaved_times(fns, repeats=repeats)
        cells = [f"{median(times[k]) * 1e3:.1f} ms" if k in times else "skipped"
                 for k in ("all boxes at once", "ours, torch", "ours, mmcv", "mmcv per class")]
        rows.append(f"| {n} | " + " | ".join(cells) + " |")
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 10000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-quadratic-above", type=int, default=10000,
                        help="skip the all-boxes-at-once case above this many boxes (it takes seconds)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info()
    print(f"machine: {info}; torch threads: {torch.get_num_threads()}\n")
    print("\n".join(run(args.sizes, args.repeats, args.skip_quadratic_above)))


if __name__ == "__main__":
    main()
