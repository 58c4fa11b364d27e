"""fairseq optimizer ``beit3_adamw``: AdamW with per-parameter weight-decay groups and sharded-model support.

BEiT / BEiT-3 / VLMo exclude biases, norm weights, position embeddings and the CLS / mask tokens from
weight decay; fairseq's ``adam`` decays every parameter alike. The model marks the excluded parameters
the way fairseq's ``composite`` optimizer reads overrides, ``param.optim_overrides = {"optimizer":
{"weight_decay": 0.0}}``, and this optimizer builds one torch param group per distinct override
(``decay`` / ``no_decay`` in the logs). Same options as ``adam`` (``--adam-betas --adam-eps
--weight-decay``), torch's ``AdamW`` update (identical to fairseq's ``adam``: decoupled decay).

With a model sharded by ``--shard-parameters`` (``sharding.py``) it also averages the replicated
gradients, clips by the global norm of sharded + replicated gradients, and gathers / re-shards full
optimizer state around checkpoints.
"""

import ast
import json
import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist
from fairseq.dataclass import FairseqDataclass
from fairseq.optim import FairseqOptimizer, register_optimizer
from omegaconf import II, OmegaConf

from .sharding import distribute_like, is_sharded, sharded_states

logger = logging.getLogger(__name__)

__all__ = ["Beit3AdamWConfig", "Beit3AdamW", "ShardAwareAdamW", "param_groups_by_overrides"]


@dataclass
class Beit3AdamWConfig(FairseqDataclass):
    adam_betas: Any = field(default="(0.9, 0.999)", metadata={"help": "betas for AdamW"})
    adam_eps: float = field(default=1e-8, metadata={"help": "epsilon for AdamW"})
    weight_decay: float = field(default=0.0, metadata={"help": "decoupled weight decay (parameters marked "
                                                                 "no-decay by the model get 0)"})
    lr: List[float] = II("optimization.lr")


def param_groups_by_overrides(params, defaults: Dict[str, Any]) -> List[Dict[str, Any]]:
    """One torch param group per distinct ``param.optim_overrides["optimizer"]`` (fairseq's convention)."""
    groups: Dict[str, Dict[str, Any]] = {}
    for p in params:
        override = (getattr(p, "optim_overrides", None) or {}).get("optimizer", {})
        key = json.dumps(override, sort_keys=True)
        if key not in groups:
            name = "no_decay" if override.get("weight_decay", None) == 0.0 else ("decay" if not override else key)
            groups[key] = {"params": [], "group_name": name, **defaults, **override}
        groups[key]["params"].append(p)
    return list(groups.values())


class ShardAwareAdamW(torch.optim.AdamW):
    """torch AdamW whose ``state_dict`` holds full tensors when parameters are sharded (gathered by
    :meth:`consolidate_state_dict` on every rank) and whose ``load_state_dict`` cuts this rank's shard."""

    _consolidated: Optional[Dict[str, Any]] = None

    def _params(self):
        return [p for g in self.param_groups for p in g["params"]]

    @property
    def sharded(self) -> bool:
        return any(is_sharded(p) for p in self._params())

    def consolidate_state_dict(self) -> None:
        """Collective (fairseq calls it on every rank before rank 0 saves): gather the full model state of
        every sharded model these parameters belong to, then the full optimizer state."""
        if not self.sharded:
            return
        for state in sharded_states(self._params()):
            state.consolidate()
        local = super().state_dict()
        full_state = {}
        for index, entry in sorted(local["state"].items()):
            full_state[index] = {k: (v.detach().full_tensor().cpu() if is_sharded(v) else v) for k, v in entry.items()}
        self._consolidated = {"state": full_state, "param_groups": local["param_groups"]} \
            if dist.get_rank() == 0 else None

    def state_dict(self):
        if not self.sharded:
            return super().state_dict()
        if self._consolidated is None:
            raise RuntimeError("sharded optimizer state must be gathered on every rank first "
                               "(consolidate_state_dict)")
        out, self._consolidated = self._consolidated, None
        return out

    def load_state_dict(self, state_dict):
        if self.sharded:
            params = self._params()
            state_dict = {**state_dict, "state": {
                index: {k: (distribute_like(v, params[int(index)]) if torch.is_tensor(v) and v.dim() > 0 else v)
                        for k, v in entry.items()}
                for index, entry in state_dict["state"].items()}}
        super().load_state_dict(state_dict)


@register_optimizer("beit3_adamw", dataclass=Beit3AdamWConfig)
class Beit3AdamW(FairseqOptimizer):
    def __init__(self, cfg: Beit3AdamWConfig, params):
        super().__init__(cfg)
        params = list(params)
        sharded = any(is_sharded(p) for p in params)
        groups = param_groups_by_overrides(params, {"weight_decay": cfg.weight_decay})
        # foreach kernels reject lists mixing sharded (DTensor) and replicated tensors
        self._optimizer = ShardAwareAdamW(groups, foreach=False if sharded else None, **self.optimizer_config)
        logger.info("beit3_adamw groups: " + ", ".join(
            f"{g['group_name']} ({len(g['params'])} tensors, weight_decay {g['weight_decay']})"
            for g in self._optimizer.param_groups))

    @property
    def optimizer_config(self):
        betas = self.cfg.adam_betas
        betas = ast.literal_eval(betas) if isinstance(betas, str) else OmegaConf.to_container(betas) \
            if OmegaConf.is_config(betas) else betas
        lr = self.cfg.lr[0] if isinstance(self.cfg.lr, Collection) else self.cfg.lr
        return {"lr": lr, "betas": tuple(betas), "eps": self.cfg.adam_eps}

    def load_state_dict(self, state_dict, optimizer_overrides=None):
        # never let a global override (e.g. weight_decay) erase the per-group no-decay setting
        overrides = {k: v for k, v in (optimizer_overrides or {}).items() if k != "weight_decay"}
        super().load_state_dict(state_dict, overrides)

    @property
    def supports_flat_params(self):
        return False

    # ------------------------------------------------------------------ sharded models
    @property
    def sharded(self) -> bool:
        return self._optimizer.sharded

    def all_reduce_grads(self, module):
        """Sharded gradients were already reduce-scattered (averaged) in backward; average the replicated
        ones here, as fairseq's legacy_ddp wrapper does for every parameter of an unsharded model."""
        if not self.sharded:
            return super().all_reduce_grads(module)
        world = dist.get_world_size()
        for p in module.parameters():
            if not p.requires_grad or is_sharded(p):
                continue
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad.data)
            p.grad.data.div_(world)

    def multiply_grads(self, c):
        if not self.sharded:
            return super().multiply_grads(c)
        for p in self.params:
            if p.grad is not None:
                p.grad.mul_(float(c))  # a python float: DTensors reject plain tensors

    def clip_grad_norm(self, max_norm, aggregate_norm_fn=None):
        """Global L2 norm over sharded (summed across ranks) and replicated gradients; clip if max_norm > 0."""
        if not self.sharded:
            return super().clip_grad_norm(max_norm, aggregate_norm_fn)
        grads = [p.grad for p in self.params if p.grad is not None]
        if not grads:
            return torch.tensor(0.0)
        sharded_sq = torch.zeros((), dtype=torch.float32)
        replicated_sq = torch.zeros((), dtype=torch.float32)
        for g in grads:
            if is_sharded(g):
                sharded_sq += g.to_local().float().pow(2).sum().cpu()
            else:
                replicated_sq += g.float().pow(2).sum().cpu()
        device = grads[0].to_local().device if is_sharded(grads[0]) else grads[0].device
        sharded_sq = sharded_sq.to(device)
        dist.all_reduce(sharded_sq)
        total = (sharded_sq + replicated_sq.to(device)).sqrt()
        if max_norm > 0:
            coef = float((max_norm / (total + 1e-6)).clamp(max=1.0))  # a python float: DTensors reject tensors
            for g in grads:
                g.mul_(coef)
        return total
