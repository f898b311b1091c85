"""Watching mixed precision while a stage trains: the fp16 loss scaler's skipped steps and non-finite gradient norms
are counted for metrics.json, and a run whose steps keep overflowing stops with one line saying what to change,
instead of spending hours on steps that update nothing (or on NaN weights)."""

from __future__ import annotations

import math

from trainer.train.model import ModelError

OVERFLOW_STREAK = 10
"""Optimizer steps in a row that may overflow before the stage stops. GradScaler starts at 2**16 and halves on each
overflow, so a healthy fp16 run skips a handful of its first steps while the scale settles, then rarely again."""


class PrecisionError(ModelError):
    """Training kept overflowing in its precision; the message says what to change."""


def trainable_grad_norm(model) -> float:
    """The L2 norm of the trainable parameters' gradients (the LoRA weights: small, one pass)."""
    import torch

    norms = [p.grad.detach().float().norm() for p in model.parameters() if p.requires_grad and p.grad is not None]
    return float(torch.stack(norms).norm()) if norms else 0.0


def keep_trainable_weights_fp32(model) -> int:
    """Cast the trainable (LoRA) weights to fp32: under fp16 AMP the loss scaler refuses fp16 gradients ("Attempting
    to unscale FP16 gradients"), and fp32 master weights are what mixed precision means. Returns how many were cast."""
    import torch

    cast = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
            cast += 1
    return cast


def precision_watch(trainer, stage: str, precision: str):
    """A TrainerCallback counting skipped steps and non-finite gradient norms on `trainer`; it raises a
    PrecisionError after OVERFLOW_STREAK overflowing steps in a row."""
    from transformers import TrainerCallback

    class PrecisionWatch(TrainerCallback):
        def __init__(self):
            self.skipped = self.nonfinite = self.streak = 0
            self.step_nonfinite = False

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            # The gradients are unscaled (and clipped) by now: the Trainer clipped them just before this call
            self.step_nonfinite = not math.isfinite(trainable_grad_norm(trainer.model))
            self.nonfinite += self.step_nonfinite

        def on_step_end(self, args, state, control, **kwargs):
            skipped = bool(trainer.accelerator.optimizer_step_was_skipped)
            self.skipped += skipped
            self.streak = self.streak + 1 if (skipped or self.step_nonfinite) else 0
            if self.streak >= OVERFLOW_STREAK:
                raise PrecisionError(self.advice(state.global_step))

        def loss_scale(self) -> float | None:
            scaler = getattr(trainer.accelerator, "scaler", None)
            return float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else None

        def advice(self, step: int) -> str:
            if precision == "fp16":
                return (f"[{stage}] stopped at step {step}: {self.streak} optimizer steps in a row overflowed in fp16 "
                        f"(loss scale down to {self.loss_scale():g}); the gradients do not fit float16 here. Set "
                        "--set precision=fp32 (slower, uses more memory), or lower learning_rate or max_grad_norm")
            return (f"[{stage}] stopped at step {step}: {self.streak} optimizer steps in a row had a non-finite "
                    f"gradient norm in {precision}; lower learning_rate (or max_grad_norm), or check the data")

    return PrecisionWatch()
