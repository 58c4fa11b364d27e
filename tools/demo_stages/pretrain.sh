#!/usr/bin/env bash
# Demo stage "pretrain": shards of the data world (beit3-plugins make-shards: WebDataset tars for pairs and
# images, plain-text shards), the tiny BEiT-3 recipe (MLM + MIM + MVLM) reading them through fairseq's own
# CLI, then the export every later stage starts from.
#   bash tools/demo_stages/pretrain.sh --world <data-world dir> --spm <spm.model> --out <dir> [--max-update N]
# Writes <out>/checkpoints/, <out>/backbone.pth (released BEiT-3 layout) and <out>/metrics.json
# (loss curve, held-out masked-token accuracies and their chance levels).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
BIN="$(dirname "$PY")"
MAX_UPDATE=250
while [[ $# -gt 0 ]]; do
  case "$1" in
    --world) WORLD="$2"; shift 2 ;;
    --spm) SPM="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --max-update) MAX_UPDATE="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
: "${WORLD:?--world is required}" "${SPM:?--spm is required}" "${OUT:?--out is required}"
mkdir -p "$OUT"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" PYTHONWARNINGS=ignore
cd "$ROOT"
rm -rf "$OUT/checkpoints"
echo "[stage] pretrain: beit3-plugins make-shards --world $WORLD --out $WORLD/shards"
"$BIN/beit3-plugins" make-shards --world "$WORLD" --out "$WORLD/shards" --samples-per-shard 64 > "$OUT/shards.log" 2>&1 \
  || { tail -20 "$OUT/shards.log" >&2; exit 1; }
echo "[stage] pretrain: fairseq-hydra-train --config-dir configs/pretrain --config-name beit3_tiny_cpu"
"$BIN/fairseq-hydra-train" --config-dir configs/pretrain --config-name beit3_tiny_cpu \
  task.data="$WORLD" task.spm_model="$SPM" checkpoint.save_dir="$OUT/checkpoints" \
  optimization.max_update="$MAX_UPDATE" dataset.disable_validation=true checkpoint.save_interval_updates=0 \
  2>&1 | tee "$OUT/train.log" | grep --line-buffered -E "train_inner|valid|Error|error" || true
test -f "$OUT/checkpoints/checkpoint_last.pt" || { echo "pretraining produced no checkpoint" >&2; exit 1; }
"$BIN/beit3-plugins" export-pretrained "$OUT/checkpoints/checkpoint_last.pt" "$OUT/backbone.pth" \
  --eval-data "$WORLD" --spm-model "$SPM" --metrics "$OUT/heldout.json" > "$OUT/export.log" 2>&1 \
  || { tail -20 "$OUT/export.log" >&2; exit 1; }
"$PY" - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
curve = []
for line in (out / "train.log").read_text().splitlines():
    if "[train_inner]" in line:
        rec = json.loads(line.split(" - ", 1)[1])
        curve.append([int(rec["num_updates"]), float(rec["loss"])])
held = json.loads((out / "heldout.json").read_text())["heldout"]
metrics = {f"{k}_acc": round(v["accuracy"], 4) for k, v in held.items()}
chance = {f"{k}_acc": round(v["chance_majority"], 4) for k, v in held.items()}
metrics["final_loss"] = curve[-1][1] if curve else None
json.dump({"metrics": metrics, "chance": chance, "curves": {"loss": curve},
           "chance_uniform": {f"{k}_acc": v["chance_uniform"] for k, v in held.items()},
           "backbone": str(out / "backbone.pth")}, open(out / "metrics.json", "w"), indent=1)
print("[stage] metric held-out masked-token accuracy (chance = most frequent target):")
for k in metrics:
    if k in chance:
        print(f"[stage] metric {k} {metrics[k]:.3f} (chance {chance[k]:.3f})")
PYEOF
