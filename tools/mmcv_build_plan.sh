#!/usr/bin/env bash
# Sourced by tools/setup_env.sh; also runnable: `bash tools/mmcv_build_plan.sh [PYTHON]` prints the plan.
# mmcv's compiled ops for this machine: CUDA kernels when the CUDA toolkit is present and a GPU is visible
# (or BEIT3_MMCV_CUDA=1 forces a CUDA build without one, for the architectures in TORCH_CUDA_ARCH_LIST);
# otherwise CPU only, as before. The toolkit is a system nvcc or the nvidia-cuda-nvcc wheel of torch's CUDA.
# Where mmcv ends up without a kernel for a device, segmentation/mmcv_ops.py falls back to PyTorch.
mmcv_cuda_plan() {  # prints "cpu" or "cuda <nvcc path> <arch list>"
  local torch_cuda nvcc archs
  torch_cuda=$("${PY:-python3}" -c "import torch; print(torch.version.cuda or '')")
  if [[ -z $torch_cuda || ${BEIT3_MMCV_CUDA:-auto} == 0 ]]; then echo cpu; return; fi
  nvcc=$(command -v nvcc || true)
  if [[ -z $nvcc ]]; then
    nvcc=$("${PY:-python3}" - <<'PYEOF' 2>/dev/null || true
import pathlib, nvidia.cuda_nvcc as m
hits = sorted(pathlib.Path(list(m.__path__)[0]).glob("**/bin/nvcc"))
print(hits[0] if hits else "")
PYEOF
)
  fi
  if [[ -z $nvcc ]]; then echo cpu; return; fi
  local gpu_archs=""
  if command -v nvidia-smi >/dev/null; then
    gpu_archs=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | sort -u | paste -sd';' || true)
  fi
  if [[ -z $gpu_archs && ${BEIT3_MMCV_CUDA:-auto} != 1 ]]; then echo cpu; return; fi  # no GPU, not forced
  archs=${TORCH_CUDA_ARCH_LIST:-${gpu_archs:-9.0}}  # forced without a GPU: Hopper unless told otherwise
  echo "cuda $nvcc $archs"
}


if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  PY=${1:-${PY:-python3}}
  mmcv_cuda_plan
fi
