#!/usr/bin/env bash
# Download, here, the wheels bench/device_check.sh installs on the lent GPU machine (Python 3.12, its own
# PyTorch, no package registry) into .whl/ (git-ignored; carried with `carry: [".whl"]`), and print their size:
# the working tree and the carried files must stay under 64 MiB together.
#
# What the device image already has (timm, safetensors, sentencepiece, tokenizers, numpy, pillow, pytest,
# hypothesis, opencv, pandas, ...) is not downloaded. mmcv (compiled ops) and fairseq (compiled) have no
# wheels for that Python and torch: their tests are reported as not run there.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
get() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d .whl "$@"
}
# the reference implementation and its import-time dependency; hydra for the VL trainer
get torchscale==0.3.0 omegaconf==2.3.0 hydra-core==1.3.2 || true
# sdist-only on PyPI, pure python: hydra's parser runtime is built here; fairscale comes from the setup cache
python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3 || true
cp "${BEIT3_WHEEL_CACHE:-$HOME/.cache/beit3-plugins/wheels}"/fairscale-0.4.0-*.whl .whl/ 2>/dev/null || true
# detectron2 (repacked pure-python wheel from the setup cache) and its pure-python needs
cp "${BEIT3_WHEEL_CACHE:-$HOME/.cache/beit3-plugins/wheels}"/detectron2-0.7.2-2-py3-none-any.whl .whl/ 2>/dev/null || true
get pycocotools fvcore iopath yacs termcolor || true
du -ch .whl/*.whl | tail -n 1
