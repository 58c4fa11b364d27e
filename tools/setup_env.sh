#!/usr/bin/env bash
# Create the project venv and install the whole real stack (torch, fairseq, detectron2, OpenMMLab with
# compiled mmcv ops, timm, sentencepiece, hydra, pycocotools, pytest) plus this project in editable mode.
#
# Idempotent: a finished setup writes a stamp keyed on this file's hash and is skipped next time.
# Wheels that must be built here (fairseq-fixed, mmcv with ops, the repacked detectron2) are cached in
# $BEIT3_WHEEL_CACHE (default ~/.cache/beit3-plugins/wheels), outside the repo, so a repeat setup on the
# same machine takes a minute or two. Versions and traps: shared/notes/dependency-stack.md.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${BEIT3_VENV:-$ROOT/.venv}
CACHE=${BEIT3_WHEEL_CACHE:-$HOME/.cache/beit3-plugins/wheels}
PY_BOOT=${PYTHON:-python3}
STAMP=$VENV/.beit3-setup-stamp
HASH=$(cat "$ROOT/tools/setup_env.sh" "$ROOT/tools/pip-constraints.txt" "$ROOT/setup.py" | sha256sum | cut -c1-16)

say() { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

if [[ -f $STAMP && $(cat "$STAMP") == "$HASH" ]]; then
  say "venv $VENV is up to date (stamp $HASH); nothing to do"
  exit 0
fi

mkdir -p "$CACHE"
if [[ ! -x $VENV/bin/python ]]; then
  say "creating venv $VENV with $($PY_BOOT --version)"
  "$PY_BOOT" -m venv "$VENV"
fi
PY=$VENV/bin/python
# This machine's pip config names local wheel folders that may not exist; hide only those warnings.
# Every install also honours tools/pip-constraints.txt (torch pins, setuptools<81 for pkg_resources).
pip_q() {
  local cmd=$1; shift
  local extra=()
  [[ $cmd == install || $cmd == wheel || $cmd == download ]] && extra=(-c "$ROOT/tools/pip-constraints.txt")
  "$PY" -m pip --disable-pip-version-check "$cmd" "${extra[@]}" "$@" \
    2> >(grep -v "^WARNING: Location .* is ignored" >&2)
}
PIP=(pip_q)

say "base build tools"
"${PIP[@]}" install -q --upgrade pip
"${PIP[@]}" install -q 'setuptools>=77,<81' wheel cython 'numpy>=2' ninja packaging

say "torch 2.14.1 + torchvision 0.29.1 (from the files on this machine's disk)"
"${PIP[@]}" install -q torch==2.14.1 torchvision==0.29.1

cached_wheel() { ls "$CACHE"/$1 2>/dev/null | head -n1 || true; }

# ---------------------------------------------------------------- fairseq (built from the sdist)
FAIRSEQ_WHL=$(cached_wheel 'fairseq_fixed-0.12.3.1-*.whl')
if [[ -z $FAIRSEQ_WHL ]]; then
  say "building fairseq-fixed 0.12.3.1 against the installed torch (~6 min on 2 cores)"
  MAX_JOBS=2 "${PIP[@]}" wheel -q --no-build-isolation --no-deps -w "$CACHE" fairseq-fixed==0.12.3.1
  FAIRSEQ_WHL=$(cached_wheel 'fairseq_fixed-0.12.3.1-*.whl')
else
  say "fairseq-fixed wheel from cache: $(basename "$FAIRSEQ_WHL")"
fi
"${PIP[@]}" install -q "$FAIRSEQ_WHL"

# ---------------------------------------------------------------- detectron2 (repacked upstream snapshot)
D2_WHL=$(cached_wheel 'detectron2-0.7.2-2-py3-none-any.whl')
if [[ -z $D2_WHL ]]; then
  say "repacking detectron2 from sal-detectron2==0.7.2 (pure python, no _C)"
  work=$(mktemp -d)
  "${PIP[@]}" download -q --no-deps --only-binary=:all: --python-version 3.10 -d "$work" sal-detectron2==0.7.2
  "$PY" "$ROOT/tools/repack_detectron2.py" "$work"/sal_detectron2-0.7.2-*.whl "$CACHE"
  rm -rf "$work"
  D2_WHL=$(cached_wheel 'detectron2-0.7.2-2-py3-none-any.whl')
else
  say "detectron2 wheel from cache: $(basename "$D2_WHL")"
fi
"${PIP[@]}" install -q "$D2_WHL"

# ---------------------------------------------------------------- mmcv 2.1.0 with compiled ops
MMCV_WHL=$(cached_wheel 'mmcv-2.1.0-*.whl')
if [[ -z $MMCV_WHL ]]; then
  say "building mmcv 2.1.0 with ops (CPU only, C++20 patch; ~20 min on 2 cores)"
  work=$(mktemp -d)
  "${PIP[@]}" download -q --no-deps --no-build-isolation --no-binary :all: -d "$work" mmcv==2.1.0
  tar -xzf "$work"/mmcv-2.1.0.tar.gz -C "$work"
  sed -i 's/-std=c++17/-std=c++20/g' "$work/mmcv-2.1.0/setup.py"
  (cd "$work/mmcv-2.1.0" && unset CUDA_HOME && export MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS=2 \
     && "${PIP[@]}" wheel -q --no-cache-dir --no-build-isolation --no-deps -w "$CACHE" .)
  rm -rf "$work"
  MMCV_WHL=$(cached_wheel 'mmcv-2.1.0-*.whl')
else
  say "mmcv wheel from cache: $(basename "$MMCV_WHL")"
fi
"${PIP[@]}" install -q --no-deps "$MMCV_WHL"

# ---------------------------------------------------------------- the rest of the stack
say "OpenMMLab (mmengine, mmdet, mmsegmentation), openmim, timm, sentencepiece, hydra, pycocotools, test tools"
"${PIP[@]}" install -q 'mmengine==0.10.7' 'mmdet==3.3.0' 'mmsegmentation==1.2.2' ftfy regex \
  addict yapf termcolor rich opencv-python-headless matplotlib scipy shapely terminaltables
# mmcv imports mmengine, so its compiled ops can only be checked now
"$PY" -c "from mmcv.ops import MultiScaleDeformableAttention; import mmcv._ext" \
  || { echo "mmcv was installed without its compiled ops; delete $MMCV_WHL and rerun" >&2; exit 1; }
# openmim's declared tree pins an old setuptools that breaks torch: install it bare, then its real needs.
"${PIP[@]}" install -q --no-deps 'openmim==0.3.9'
"${PIP[@]}" install -q click colorama model-index pandas requests rich tabulate opendatalab || \
  "${PIP[@]}" install -q click colorama model-index pandas requests rich tabulate
"${PIP[@]}" install -q 'timm>=1.0.9' sentencepiece 'hydra-core==1.3.2' 'omegaconf==2.3.0' pycocotools \
  tensorboard pytest pytest-timeout

# The official BEiT-3 implementation (torchscale) is the reference in tests and benchmarks. Its metadata
# pins timm==0.6.13 but it runs with timm 1.x, so it goes in without its declared dependencies.
FAIRSCALE_WHL=$(cached_wheel 'fairscale-0.4.0-*.whl')
if [[ -z $FAIRSCALE_WHL ]]; then
  say "building fairscale 0.4.0 (torchscale's dependency)"
  "${PIP[@]}" wheel -q --no-build-isolation --no-deps -w "$CACHE" fairscale==0.4.0
  FAIRSCALE_WHL=$(cached_wheel 'fairscale-0.4.0-*.whl')
fi
"${PIP[@]}" install -q --no-deps "$FAIRSCALE_WHL" torchscale==0.3.0

say "this project (editable, with every extra)"
"${PIP[@]}" install -q --no-build-isolation --no-deps -e "$ROOT"

say "checking imports"
"$PY" - <<'PYEOF'
import importlib
for name in ["torch", "torchvision", "fairseq", "detectron2", "mmcv.ops", "mmengine", "mmdet", "mmseg",
             "mim", "timm", "sentencepiece", "hydra", "pycocotools", "torchscale", "beit3_plugins"]:
    mod = importlib.import_module(name)
    print(f"  {name:14s} {getattr(mod, '__version__', '')}")
PYEOF
echo "$HASH" > "$STAMP"
say "done: $VENV"
