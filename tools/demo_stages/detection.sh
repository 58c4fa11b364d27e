#!/usr/bin/env bash
# Demo stage "detection": BEiT-3 ViTDet + Cascade Mask R-CNN (soft-NMS) through the command users type,
#   python -m beit3_plugins.detection.train --config-file detection/cascade_beit3_tiny.yaml DATASETS.ROOT <world> ...
# trained on the data world's COCO instances (coco/train2017) and evaluated on coco/val2017 (box + mask AP
# with detectron2's COCOEvaluator), with a visualisation PNG of predictions next to ground truth.
# Writes <out>/metrics.json ({"metrics", "chance", "curves"}) and <out>/detection.png.
# Usage: detection.sh --world WORLD_DIR --out OUT_DIR [--init BACKBONE_CKPT] [--spm IGNORED] [--iters N]
set -euo pipefail

WORLD="" OUT="" INIT="" ITERS="${DETECTION_DEMO_ITERS:-200}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --world) WORLD="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --init) INIT="$2"; shift 2 ;;
    --iters) ITERS="$2"; shift 2 ;;
    --spm) shift 2 ;;  # passed to every stage by the orchestrator; detection has no text
    *) echo "detection.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [[ -z "$WORLD" || -z "$OUT" ]]; then
  echo "usage: detection.sh --world WORLD_DIR --out OUT_DIR [--init BACKBONE_CKPT] [--iters N]" >&2; exit 2
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# one intra-op thread: on a busy 2-core machine two OpenMP threads spin against each other (several x slower)
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
PY="${PY:-$ROOT/.venv/bin/python}"
WORLD="$(cd "$WORLD" && pwd)"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
for f in coco/annotations/instances_train2017.json coco/annotations/instances_val2017.json; do
  [[ -f "$WORLD/$f" ]] || { echo "detection.sh: $WORLD/$f not found (generate the world with detection)" >&2; exit 2; }
done

OPTS=(DATASETS.ROOT "$WORLD" OUTPUT_DIR "$OUT/train" SOLVER.MAX_ITER "$ITERS"
      SOLVER.STEPS "($((ITERS * 4 / 5)),)" SOLVER.CHECKPOINT_PERIOD "$ITERS")
if [[ -n "$INIT" ]]; then
  OPTS+=(MODEL.BEIT3.WEIGHTS "$INIT")
fi
echo "[stage] detection: python -m beit3_plugins.detection.train --config-file detection/cascade_beit3_tiny.yaml ${OPTS[*]}"
"$PY" -m beit3_plugins.detection.train --config-file detection/cascade_beit3_tiny.yaml --visualize 4 "${OPTS[@]}"

"$PY" - "$OUT" "$INIT" <<'EOF'
import json
import shutil
import sys
from pathlib import Path

out, init = Path(sys.argv[1]), sys.argv[2]
train = out / "train"
results = json.loads((train / "eval_results.json").read_text())
records = [json.loads(line) for line in (train / "metrics.json").read_text().splitlines() if line.strip()]
losses = [[r["iteration"], r["total_loss"]] for r in records if "total_loss" in r]


def series(*keys):
    return [[r["iteration"], sum(r[k] for k in keys)] for r in records if all(k in r for k in keys)]


# per head, not the total: as the RPN improves, the later cascade stages get more foreground proposals to
# classify and regress, so their losses (and the total) can rise while AP improves; each head's own curve and the
# final AP are what to read
heads = {"rpn": series("loss_rpn_cls", "loss_rpn_loc"), "mask": series("loss_mask")}
heads.update({f"stage {s + 1} cls+box": series(f"loss_cls_stage{s}", f"loss_box_reg_stage{s}") for s in range(3)})
metrics = {"val_box_AP": results["bbox"]["AP"], "val_box_AP50": results["bbox"]["AP50"],
           "val_mask_AP": results["segm"]["AP"], "val_mask_AP50": results["segm"]["AP50"],
           "iterations": losses[-1][0] + 1 if losses else 0, "backbone_init": init or "random"}
report = train / "backbone_init_report.json"
if report.exists():
    # written by LoadReport.write (beit3_plugins/checkpoint.py)
    metrics["backbone_tensors_loaded"] = len(json.loads(report.read_text())["loaded"])
# chance: a detector that outputs random boxes has AP ~ 0 on COCO metrics
chance = {"val_box_AP": 0.0, "val_mask_AP": 0.0}
pngs = sorted((train / "visualization").glob("*.png"))
if pngs:
    shutil.copy(pngs[0], out / "detection.png")
(out / "metrics.json").write_text(json.dumps({"metrics": metrics, "chance": chance,
                                              "curves": {"train loss per head": {k: v for k, v in heads.items() if v}}},
                                             indent=1))
print(f"[stage] detection: val box AP {metrics['val_box_AP']:.1f}, mask AP {metrics['val_mask_AP']:.1f} "
      f"(AP50 {metrics['val_box_AP50']:.1f}); {len(pngs)} visualisations; metrics in {out / 'metrics.json'}")
EOF
