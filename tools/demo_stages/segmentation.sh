#!/usr/bin/env bash
# Demo stage "segmentation": BEiT-3 ViT-Adapter + Mask2Former through the commands users type.
#   mim train mmseg configs/ade20k_beit3_tiny.py   on the data world's ADEChallengeData2016 tree
#   mim test  mmseg configs/ade20k_beit3_tiny.py --checkpoint ... --show-dir ...   (mIoU + PNGs)
# Writes <out>/metrics.json ({"metrics", "chance", "curves"}) and <out>/segmentation.png.
# Usage: segmentation.sh --world WORLD_DIR --out OUT_DIR [--init BACKBONE_CKPT] [--spm IGNORED]
set -euo pipefail

WORLD="" OUT="" INIT=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --world) WORLD="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --init) INIT="$2"; shift 2 ;;
    --spm) shift 2 ;;  # the orchestrator passes it to every stage; segmentation has no text
    *) echo "segmentation.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [[ -z "$WORLD" || -z "$OUT" ]]; then
  echo "usage: segmentation.sh --world WORLD_DIR --out OUT_DIR [--init BACKBONE_CKPT]" >&2; exit 2
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
MIM="$(dirname "$PY")/mim"
[[ -x "$MIM" ]] || MIM=mim
CONFIG="$ROOT/configs/ade20k_beit3_tiny.py"
# tiny models on a shared CPU: one intra-op thread avoids OpenMP spin-waiting under load
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export ADE20K_ROOT="$(cd "$WORLD" && pwd)/ADEChallengeData2016"
if [[ ! -d "$ADE20K_ROOT/images/training" ]]; then
  echo "segmentation.sh: $ADE20K_ROOT/images/training not found (generate the world first)" >&2; exit 1
fi
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
WORK="$OUT/work"
rm -rf "$WORK" "$OUT/test" "$OUT/vis"

OPTS=()
if [[ -n "$INIT" ]]; then
  OPTS=(--cfg-options "model.backbone.pretrained=$(cd "$(dirname "$INIT")" && pwd)/$(basename "$INIT")")
fi

echo "[stage] mim train mmseg $CONFIG (ADE20K_ROOT=$ADE20K_ROOT${INIT:+, backbone init $INIT})"
"$MIM" train mmseg "$CONFIG" --launcher none --gpus 0 --work-dir "$WORK" "${OPTS[@]}"
CKPT="$(cat "$WORK/last_checkpoint")"
echo "[stage] mim test mmseg $CONFIG --checkpoint $CKPT --show-dir $OUT/vis"
"$MIM" test mmseg "$CONFIG" --launcher none --gpus 0 --checkpoint "$CKPT" --work-dir "$OUT/test" \
  --show-dir "$OUT/vis"

"$PY" - "$WORK" "$OUT" "${INIT:-}" <<'EOF'
import json, shutil, sys
from pathlib import Path

from beit3_plugins.segmentation.mim_runs import read_scalars, read_test_metrics

work, out, init = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
records = read_scalars(work)
test = read_test_metrics(out / "test")
classes = json.loads((Path(__import__("os").environ["ADE20K_ROOT"]) / "classes.json").read_text())["classes"]
metrics = {"val_mIoU": test["mIoU"], "val_mAcc": test["mAcc"], "val_aAcc": test["aAcc"],
           "iterations": max(r["step"] for r in records if "loss" in r),
           "backbone_init": init or "random"}
# chance: every pixel predicted as background (the most frequent class) -> background IoU / #classes
import numpy as np
from PIL import Image
raw = np.concatenate([np.asarray(Image.open(p)).ravel() for p in
                      sorted((Path(__import__("os").environ["ADE20K_ROOT"]) / "annotations/validation").glob("*.png"))])
labelled = raw[raw > 0]
chance = {"val_mIoU": round(100.0 * float((labelled == 1).mean()) / len(classes), 1)}
curves = {"train_loss": [[r["step"], r["loss"]] for r in records if "loss" in r]}
pngs = sorted(out.joinpath("vis").rglob("*.png"))
if pngs:
    shutil.copy(pngs[0], out / "segmentation.png")
(out / "metrics.json").write_text(json.dumps({"metrics": metrics, "chance": chance, "curves": curves}, indent=1))
print(f"[stage] segmentation: val mIoU {test['mIoU']:.1f} (chance ~{chance['val_mIoU']}), "
      f"{len(pngs)} visualisations, metrics in {out / 'metrics.json'}")
EOF
