"""``Beit3GuardedOptimWrapper``: mmengine's ``OptimWrapper`` that refuses non-finite losses and gradients.

Why here: mmengine's ``OptimWrapper.update_params`` backpropagates and steps whatever loss it gets, so one
NaN loss turns every weight into NaN and the run goes on logging ``loss: nan`` (mmdet's
``CheckInvalidLossHook`` only looks every N iterations, *after* the step). The wrapper sits between the
loss and the optimizer, so it checks the loss before ``backward`` and the gradients before ``step``.
It also wraps the forward (``optim_context``): with a diverged model Mask2Former's Hungarian matcher fails
inside scipy (``ValueError: matrix contains invalid numeric entries``) before any loss exists; that error is
turned into the same clear message (a non-finite prediction at iteration N).

``on_nonfinite='stop'`` (default) raises :class:`NonFiniteLossError`; ``'skip'`` drops the iteration's
update (no backward/step, gradients zeroed), logs it and counts it in ``skipped_iters``; after
``max_skips`` skipped iterations it stops anyway. ``debug_nan_loss_at_iter=N`` replaces the loss of
iteration N (1-based, as in the ``Iter(train) [N/...]`` log lines) by NaN, to test the guard in a real run.
Selected by ``optim_wrapper.type = 'Beit3GuardedOptimWrapper'`` in ``configs/ade20k_beit3.py``.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Dict, List, Optional

import torch
from mmengine.logging import MessageHub, MMLogger
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS

__all__ = ["Beit3GuardedOptimWrapper", "NonFiniteLossError"]

_SCIPY_NONFINITE = "matrix contains invalid numeric entries"


class NonFiniteLossError(RuntimeError):
    """The loss, a gradient or a prediction of a training iteration is NaN/inf."""


@OPTIM_WRAPPERS.register_module()
class Beit3GuardedOptimWrapper(OptimWrapper):
    """``OptimWrapper`` whose update is refused when the loss or the gradients are not finite."""

    def __init__(self, *args, on_nonfinite: str = "stop", max_skips: int = 10,
                 debug_nan_loss_at_iter: Optional[int] = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if on_nonfinite not in ("stop", "skip"):
            raise ValueError(f"optim_wrapper.on_nonfinite must be 'stop' or 'skip', got {on_nonfinite!r}")
        self.on_nonfinite = on_nonfinite
        self.max_skips = int(max_skips)
        self.debug_nan_loss_at_iter = debug_nan_loss_at_iter
        self.skipped_iters: List[int] = []

    @staticmethod
    def _iteration() -> int:
        """1-based training iteration, as mmengine's log lines count (RuntimeInfoHook stores 0-based)."""
        return int(MessageHub.get_current_instance().get_info("iter", -1)) + 1

    def _refuse(self, what: str) -> None:
        iteration = self._iteration()
        message = (f"non-finite {what} at training iteration {iteration}; the optimizer step was not taken, "
                   "so the weights are still finite (lower the lr, enable clip_grad, or check the data of "
                   "this iteration)")
        if self.on_nonfinite == "skip" and len(self.skipped_iters) < self.max_skips:
            self.skipped_iters.append(iteration)
            self.optimizer.zero_grad()
            self.message_hub.update_info("nonfinite_skipped_iters", list(self.skipped_iters))
            MMLogger.get_current_instance().warning(
                f"{message}: iteration skipped ({len(self.skipped_iters)} skipped so far: {self.skipped_iters})")
            return
        if self.on_nonfinite == "skip":
            message += f"; stopping after {self.max_skips} skipped iterations {self.skipped_iters}"
        raise NonFiniteLossError(message)

    def update_params(self, loss: torch.Tensor, step_kwargs: Optional[Dict] = None,
                      zero_kwargs: Optional[Dict] = None) -> None:
        if self.debug_nan_loss_at_iter is not None and self._iteration() == int(self.debug_nan_loss_at_iter):
            loss = loss * float("nan")
        if not bool(torch.isfinite(loss.detach()).all()):
            self._refuse(f"loss ({float(loss.detach().sum())})")
            return
        loss = self.scale_loss(loss)
        self.backward(loss)
        if self.should_update():
            if not self._gradients_finite():
                self._refuse("gradient")
                return
            self.step(**(step_kwargs or {}))
            self.zero_grad(**(zero_kwargs or {}))

    def _gradients_finite(self) -> bool:
        grads = [p.grad.detach() for group in self.optimizer.param_groups for p in group["params"]
                 if p.grad is not None]
        if not grads:
            return True
        return bool(torch.isfinite(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])).all())

    @contextmanager
    def optim_context(self, model: torch.nn.Module):
        try:
            with super().optim_context(model):
                yield
        except ValueError as error:
            if _SCIPY_NONFINITE not in str(error):
                raise
            raise NonFiniteLossError(
                f"non-finite prediction at training iteration {self._iteration()}: Mask2Former's Hungarian "
                f"matcher got NaN/inf costs ({error}); the weights diverged in an earlier step (lower the lr "
                "or enable clip_grad)") from error
