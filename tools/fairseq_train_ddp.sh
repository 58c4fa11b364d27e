#!/usr/bin/env bash
# One fairseq-train process of a torchrun launch: passes torchrun's RANK to fairseq explicitly.
# fairseq reads RANK itself only when no --distributed-init-method is given, and then computes
# rank % torch.cuda.device_count(), which divides by zero on CPU-only machines.
# Every rank reads the checkpoint it resumes from (--load-checkpoint-on-all-dp-ranks): fairseq's default,
# rank 0 broadcasting the loaded state, unpickles its OmegaConf config under torch's weights_only default
# and fails.
#   data parallel:         torchrun --nproc_per_node 2 --no-python tools/fairseq_train_ddp.sh <data> \
#                              --user-dir ... --cpu --distributed-backend gloo --distributed-world-size 2 \
#                              --ddp-backend legacy_ddp ...
#   sharded (torch FSDP2): the same plus --shard-parameters --optimizer beit3_adamw [--checkpoint-activations]
#                          (or SHARDED=1 in the environment, which adds those flags)
set -euo pipefail
: "${RANK:?run me under torchrun (RANK is not set)}"
extra=()
if [[ "${SHARDED:-0}" == 1 ]]; then
    extra=(--shard-parameters --optimizer beit3_adamw --ddp-backend legacy_ddp)
fi
exec "${FAIRSEQ_TRAIN:-fairseq-train}" "$@" "${extra[@]}" --distributed-init-method env:// \
    --distributed-rank "$RANK" --distributed-no-spawn --device-id 0 --load-checkpoint-on-all-dp-ranks
