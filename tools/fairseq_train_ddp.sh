#!/usr/bin/env bash
# One fairseq-train process of a torchrun launch: passes torchrun's RANK to fairseq explicitly.
# fairseq reads RANK itself only when no --distributed-init-method is given, and then computes
# rank % torch.cuda.device_count(), which divides by zero on CPU-only machines.
#   torchrun --nproc_per_node 2 --no-python tools/fairseq_train_ddp.sh <data> --user-dir ... --cpu \
#       --distributed-backend gloo --distributed-world-size 2 --ddp-backend legacy_ddp ...
set -euo pipefail
: "${RANK:?run me under torchrun (RANK is not set)}"
exec "${FAIRSEQ_TRAIN:-fairseq-train}" "$@" --distributed-init-method env:// --distributed-rank "$RANK" \
    --distributed-no-spawn --device-id 0
