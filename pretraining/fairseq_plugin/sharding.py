"""Sharded data parallelism for fairseq pretraining with torch FSDP2 (``fully_shard``), on CPU (gloo) or GPU.

Why not fairseq's own ``--ddp-backend fully_sharded``: it wraps the model in fairscale 0.4's FSDP, which
is CUDA-only (``_get_default_cuda_device``; ``torch.cuda.stream(self._streams[...])`` in its all-gather and
post-backward paths, where ``_streams`` stays empty without CUDA; ``.cuda()`` in ``clip_grad_norm_``).
FSDP2 runs on any device and process group, so the plugin shards the model itself and uses fairseq's
extension points, without touching fairseq:

* the model (``--shard-parameters``) applies ``fully_shard`` to every backbone layer (each layer
  all-gathers its parameters just before it runs and frees them after; with
  ``--checkpoint-activations`` the recomputation gathers again) and to the whole model for the rest
  (embeddings, norms, heads). Frozen parameters (stagewise training, the VQ-KD tokenizer) and scalars stay
  replicated. Gradients of sharded parameters are reduce-scattered (averaged) during backward.
* the optimizer ``beit3_adamw`` (``optimizers.py``) knows sharded gradients: its ``all_reduce_grads``
  averages only the replicated ones (what fairseq's ``legacy_ddp`` wrapper would do for every parameter),
  its gradient clipping sums the squared shard norms across ranks, and its ``consolidate_state_dict``
  (the hook fairseq calls on every rank before rank 0 writes a checkpoint) gathers the full model and
  optimizer state. Checkpoints therefore hold full tensors: they resume under any world size, with or
  without sharding, and ``export-pretrained`` reads them unchanged.

Launch with ``--ddp-backend legacy_ddp`` (fairseq's wrapper then only forwards calls) and
``--optimizer beit3_adamw``; see ``tools/fairseq_train_ddp.sh`` and docs/pretraining.md.
"""
from __future__ import annotations

import logging
from typing import Dict, Iterable, List, Optional, Set

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["ShardedState", "shard_model", "is_sharded", "sharded_states", "distribute_like",
           "MIXED_PRECISION"]

logger = logging.getLogger(__name__)
# fairseq silences INFO on ranks > 0; every rank reports its own shard, so this logger keeps INFO
shard_logger = logging.getLogger(__name__ + ".report")
shard_logger.setLevel(logging.INFO)

MIXED_PRECISION = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _dtensor_cls():
    from torch.distributed.tensor import DTensor

    return DTensor


def is_sharded(t: Tensor) -> bool:
    return isinstance(t, _dtensor_cls())


def distribute_like(full: Tensor, like: Tensor) -> Tensor:
    """Cut this rank's shard out of a full tensor that every rank holds (no communication)."""
    from torch.distributed.tensor import distribute_tensor

    if not is_sharded(like):
        return full
    full = full.to(device=like.device, dtype=like.dtype)
    return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None)


class ShardedState:
    """Full state of a sharded model for fairseq's rank-0 checkpoint writer.

    fairseq calls ``model.state_dict()`` on rank 0 only, but gathering shards needs every rank. The
    optimizer's ``consolidate_state_dict`` (called on all ranks just before saving) runs :meth:`consolidate`
    of every ``ShardedState`` its parameters point to (``param.sharded_state``); the model's
    ``state_dict`` then takes the gathered tensors (once) from :meth:`take`.
    """

    def __init__(self, module: nn.Module) -> None:
        self._module_ref = [module]  # a list, so the module is not registered as a submodule of anything
        self._full: Optional[Dict[str, Tensor]] = None

    @property
    def module(self) -> nn.Module:
        return self._module_ref[0]

    def consolidate(self) -> None:
        rank = dist.get_rank()
        full: Dict[str, Tensor] = {}
        for name, p in self.module.named_parameters():
            if is_sharded(p):
                value = p.detach().full_tensor().cpu()
                if rank == 0:
                    full[name] = value
        self._full = full if rank == 0 else None

    def take(self) -> Dict[str, Tensor]:
        if self._full is None:
            raise RuntimeError("the model is sharded across ranks: its full state exists only after the "
                               "optimizer gathered it on every rank (use --optimizer beit3_adamw and do not "
                               "pass --no-save-optimizer-state)")
        full, self._full = self._full, None
        return full


def _ignored(model: nn.Module) -> Set[nn.Parameter]:
    """Parameters that stay replicated: frozen ones (no gradient, no optimizer state) and scalars."""
    return {p for p in model.parameters() if not p.requires_grad or p.dim() == 0}


def shard_model(model: nn.Module, layers: Iterable[nn.Module], device_type: str = "cpu",
                param_dtype: Optional[torch.dtype] = None, layer_methods: Iterable[str] = ()
                ) -> ShardedState:
    """Shard ``model`` over all ranks of the default process group: one FSDP2 unit per module in ``layers``
    (gathered only while it runs) and one for the rest of ``model``. ``layer_methods`` are extra entry
    points of the layers that must gather parameters like ``forward`` (the backbone's layers have none: every
    path runs them through ``forward``). Returns the :class:`ShardedState` also set on every sharded
    parameter as ``param.sharded_state``."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("sharded data parallelism needs an initialised process group (a distributed launch)")
    mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None)
    ignored = _ignored(model)
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy, ignored_params=ignored)
        for method in layer_methods:
            if hasattr(layer, method):
                register_fsdp_forward_method(layer, method)
    fully_shard(model, mesh=mesh, mp_policy=policy, ignored_params=ignored)
    state = ShardedState(model)
    local = total = 0
    for p in model.parameters():
        if is_sharded(p):
            p.sharded_state = state
        if p.requires_grad:
            total += p.numel()
            local += p.to_local().numel() if is_sharded(p) else p.numel()
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    shard_logger.info(f"sharded parameters: rank {dist.get_rank()} holds {local} of {total} trainable parameter "
                      f"elements ({local / max(total, 1):.3f}) over {dist.get_world_size()} ranks; "
                      f"{frozen} frozen elements replicated")
    return state


def sharded_states(params: Iterable[Tensor]) -> List[ShardedState]:
    """Distinct :class:`ShardedState` objects the given parameters belong to (in first-seen order)."""
    seen: Dict[int, ShardedState] = {}
    for p in params:
        state = getattr(p, "sharded_state", None)
        if state is not None:
            seen.setdefault(id(state), state)
    return list(seen.values())
