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

# ensure_wheel GLOB WHAT BUILDER: sets WHEEL to the cached wheel matching GLOB, running BUILDER (which
# writes into $CACHE) first when there is none.
ensure_wheel() {
  WHEEL=$(cached_wheel "$1")
  if [[ -n $WHEEL ]]; then
    say "$2: wheel from cache ($(basename "$WHEEL"))"
    return
  fi
  say "$2: building"
  "$3"
  WHEEL=$(cached_wheel "$1")
  [[ -n $WHEEL ]] || { echo "building $2 left no wheel matching $1 in $CACHE" >&2; exit 1; }
}

build_fairseq() {  # the sdist of upstream main, compiled against the installed torch (~6 min on 2 cores)
  MAX_JOBS=2 "${PIP[@]}" wheel -q --no-build-isolation --no-deps -w "$CACHE" fairseq-fixed==0.12.3.1
}

build_detectron2() {  # upstream snapshot repacked as pure python, without its _C (see the script)
  local work; work=$(mktemp -d)
  "${PIP[@]}" download -q --no-deps --only-binary=:all: --python-version 3.10 -d "$work" sal-detectron2==0.7.2
  "$PY" "$ROOT/tools/repack_detectron2.py" "$work"/sal_detectron2-0.7.2-*.whl "$CACHE"
  rm -rf "$work"
}

# how mmcv's ops are built here (cpu, or cuda with an nvcc and GPU architectures): tools/mmcv_build_plan.sh
source "$ROOT/tools/mmcv_build_plan.sh"

build_mmcv() {  # with compiled ops; torch 2.14's headers need C++20 (CPU ops ~8-20 min on 2 cores)
  local work plan; work=$(mktemp -d)
  plan=$(mmcv_cuda_plan)
  "${PIP[@]}" download -q --no-deps --no-build-isolation --no-binary :all: -d "$work" mmcv==2.1.0
  tar -xzf "$work"/mmcv-2.1.0.tar.gz -C "$work"
  sed -i 's/-std=c++17/-std=c++20/g' "$work/mmcv-2.1.0/setup.py"
  if [[ $plan == cuda* ]]; then
    read -r _ nvcc archs <<<"$plan"
    say "mmcv ops with CUDA ($nvcc, architectures $archs)"
    (cd "$work/mmcv-2.1.0" && export CUDA_HOME=$(dirname "$(dirname "$nvcc")") MMCV_WITH_OPS=1 FORCE_CUDA=1 \
       TORCH_CUDA_ARCH_LIST="$archs" MAX_JOBS=${MAX_JOBS:-$(nproc)} \
     && "${PIP[@]}" wheel -q --no-cache-dir --no-build-isolation --no-deps -w "$1" .)
  else
    (cd "$work/mmcv-2.1.0" && unset CUDA_HOME && export MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS=2 \
       && "${PIP[@]}" wheel -q --no-cache-dir --no-build-isolation --no-deps -w "$1" .)
  fi
  rm -rf "$work"
}

build_fairscale() {  # torchscale's dependency
  "${PIP[@]}" wheel -q --no-build-isolation --no-deps -w "$CACHE" fairscale==0.4.0
}

ensure_wheel 'fairseq_fixed-0.12.3.1-*.whl' "fairseq-fixed 0.12.3.1" build_fairseq
"${PIP[@]}" install -q "$WHEEL"
ensure_wheel 'detectron2-0.7.2-2-py3-none-any.whl' "detectron2 0.7.2 (repacked)" build_detectron2
"${PIP[@]}" install -q "$WHEEL"
# CPU builds keep the cache's top level (as before); CUDA builds get a folder per CUDA version and arch list
MMCV_PLAN=$(mmcv_cuda_plan)
MMCV_CACHE=$CACHE
if [[ $MMCV_PLAN == cuda* ]]; then
  read -r _ _ MMCV_ARCHS <<<"$MMCV_PLAN"
  MMCV_CACHE=$CACHE/mmcv-cuda$("$PY" -c "import torch; print(torch.version.cuda)")-sm${MMCV_ARCHS//[^0-9]/_}
  mkdir -p "$MMCV_CACHE"
fi
build_mmcv_here() { build_mmcv "$MMCV_CACHE"; }
WHEEL=$(ls "$MMCV_CACHE"/mmcv-2.1.0-*.whl 2>/dev/null | head -n1 || true)
if [[ -z $WHEEL ]]; then
  say "mmcv 2.1.0 with ops ($MMCV_PLAN): building"
  build_mmcv_here
  WHEEL=$(ls "$MMCV_CACHE"/mmcv-2.1.0-*.whl | head -n1)
else
  say "mmcv 2.1.0 with ops ($MMCV_PLAN): wheel from cache ($(basename "$WHEEL"))"
fi
MMCV_WHL=$WHEEL
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
  pycocoevalcap tensorboard pytest pytest-timeout pytest-xdist hypothesis 'webdataset>=1.0'
# text tokenizers beyond sentencepiece: BERT WordPiece (VLMo); transformers' BertTokenizer is its test reference
"${PIP[@]}" install -q 'tokenizers>=0.15' 'transformers>=4.40'
# model zoo: safetensors files, download progress bars, optional hf-hub: names
"${PIP[@]}" install -q safetensors tqdm huggingface_hub
# ONNX export of the task models (beit3-plugins export-onnx) and its check against PyTorch
"${PIP[@]}" install -q onnx onnxruntime

# The official BEiT-3 implementation (torchscale) is the reference in tests and benchmarks. Its metadata
# pins timm==0.6.13 but it runs with timm 1.x, so it goes in without its declared dependencies.
ensure_wheel 'fairscale-0.4.0-*.whl' "fairscale 0.4.0" build_fairscale
"${PIP[@]}" install -q --no-deps "$WHEEL" torchscale==0.3.0
# search (docs/search.md): FAISS, parquet, the ASGI app and its server; selenium for the browser test
"${PIP[@]}" install -q 'faiss-cpu>=1.8' 'pyarrow>=14' 'starlette>=0.40' 'uvicorn>=0.30' 'python-multipart>=0.0.9' \
  'selenium>=4.20'
# Debian's headless chromium + its driver for the browser test (tests/search/test_browser.py); apt only when
# missing, and only where apt exists and we are root (elsewhere the test says what to install)
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
    say "chromium + chromium-driver (apt)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    say "chromium / chromedriver missing and apt-get unavailable (not root?): the browser test will fail"
  fi
fi

say "this project (editable, with every extra)"
"${PIP[@]}" install -q --no-build-isolation --no-deps -e "$ROOT"

say "checking imports"
"$PY" - <<'PYEOF'
import importlib
for name in ["torch", "torchvision", "fairseq", "detectron2", "mmcv.ops", "mmengine", "mmdet", "mmseg",
             "mim", "timm", "sentencepiece", "hydra", "pycocotools", "torchscale", "faiss", "pyarrow",
             "starlette", "uvicorn", "selenium", "beit3_plugins"]:
    mod = importlib.import_module(name)
    print(f"  {name:14s} {getattr(mod, '__version__', '')}")
PYEOF
echo "$HASH" > "$STAMP"
say "done: $VENV"
