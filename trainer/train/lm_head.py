"""A leaner fused LM head for devices without Triton (the CPU).

TRL's SFTTrainer computes the loss through a chunked LM head that never materialises the full logits. On
Triton devices its kernels are fast; elsewhere it falls back to torch ops that score every position (prompt and
padding included), run ~10 fp32 passes over each [tokens x vocabulary] tile for its metrics, and do the backward
GEMM in fp32. Profiling the demo on 2 CPU cores put ~36% of each training step there.

`install_compact_lm_head` wraps the trainer's patched forward: on a Triton device, or for models with logit
scaling, soft-capping, an LM-head bias or MoE routing, it defers to TRL unchanged. Otherwise it scores only the
positions that carry a label, in token chunks, with one bf16 GEMM forward and one backward (MKL accumulates in fp32
inside a GEMM, so each gradient is rounded once), and returns the same `FusedCausalLMOutput` fields TRL's metrics
read (log-probabilities, entropy, top-1 hit, label mask).
"""

from __future__ import annotations

import types

TOKEN_CHUNK = 512  # tokens per tile: 512 x 49k vocabulary x fp32 = ~100 MB transient


def _chunked_logprob():
    import torch

    class CompactLogProb(torch.autograd.Function):
        """log p(target), entropy and top-1 hit for each row of `hidden @ weight.T`, in token chunks."""

        @staticmethod
        def forward(ctx, hidden, weight, targets):
            device = hidden.device
            dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else hidden.dtype
            w = weight.to(dtype)
            n = hidden.shape[0]
            logp = torch.empty(n, dtype=torch.float32, device=device)
            entropy = torch.empty(n, dtype=torch.float32, device=device)
            top1 = torch.empty(n, dtype=torch.bool, device=device)
            lse = torch.empty(n, dtype=torch.float32, device=device)
            for s in range(0, n, TOKEN_CHUNK):
                e = min(s + TOKEN_CHUNK, n)
                z = (hidden[s:e].to(dtype) @ w.t()).float()
                lse[s:e] = torch.logsumexp(z, dim=-1)
                t = targets[s:e]
                logp[s:e] = z.gather(1, t[:, None]).squeeze(1) - lse[s:e]
                top1[s:e] = z.argmax(dim=-1) == t  # argmax takes the first maximum, as TRL's metric does
                z.sub_(lse[s:e, None])  # log p
                entropy[s:e] = -(z.exp() * z).sum(dim=-1)
            ctx.save_for_backward(hidden, weight, targets, lse)
            ctx.dtype = dtype
            ctx.mark_non_differentiable(entropy, top1)
            return logp, entropy, top1

        @staticmethod
        def backward(ctx, grad_logp, _grad_entropy, _grad_top1):
            hidden, weight, targets, lse = ctx.saved_tensors
            dtype = ctx.dtype
            w = weight.to(dtype)
            need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
            grad_h = torch.empty_like(hidden) if need_h else None
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
            if grad_logp is None:
                return (torch.zeros_like(hidden) if need_h else None), grad_w, None
            n = hidden.shape[0]
            for s in range(0, n, TOKEN_CHUNK):
                e = min(s + TOKEN_CHUNK, n)
                h = hidden[s:e].to(dtype)
                g = grad_logp[s:e].float()
                # d log p_t / dz = onehot(t) - softmax(z)
                z = (h @ w.t()).float()
                z.sub_(lse[s:e, None]).exp_().mul_(-g[:, None])
                z.scatter_add_(1, targets[s:e, None], g[:, None])
                dz = z.to(dtype)
                if need_h:
                    grad_h[s:e] = (dz @ w).to(hidden.dtype)
                if need_w:
                    grad_w.addmm_(dz.t().float(), h.float())
            return grad_h, (grad_w.to(weight.dtype) if need_w else None), None

    return CompactLogProb


def install_compact_lm_head(model) -> bool:
    """Wrap a model already patched by TRL's `add_fused_lm_head`; returns whether the compact path is active."""
    import torch
    from trl.kernels.chunked_logprob import _use_triton
    from trl.trainer.utils import FusedCausalLMOutput

    text_config = model.config.get_text_config()
    if any(getattr(text_config, key, None) not in (None, 1.0) for key in
           ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")):
        return False
    if getattr(text_config, "output_router_logits", False) or model.get_output_embeddings().bias is not None:
        return False
    trl_forward = model.forward
    compact = _chunked_logprob()

    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kwargs):
        lm_head = self.get_output_embeddings()
        if not fused_lm_head or _use_triton(lm_head.weight.device):
            return trl_forward(*args, fused_lm_head=fused_lm_head, labels=labels, shift_labels=shift_labels,
                               num_items_in_batch=num_items_in_batch, **kwargs)
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state
        if shift_labels is None:
            hidden, labels = hidden[:, :-1], labels[:, 1:]
        else:
            labels = shift_labels
        hidden, labels = hidden.to(lm_head.weight.device), labels.to(lm_head.weight.device)
        mask = labels != -100
        logp, entropy, top1 = compact.apply(hidden[mask], lm_head.weight, labels[mask])
        # masked_scatter keeps an all-masked batch connected to the graph (a differentiable zero)
        log_probs = logp.new_zeros(mask.shape).masked_scatter(mask, logp)
        denominator = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(
            loss=-log_probs.sum() / denominator,
            log_probs=log_probs,
            entropy=entropy.new_zeros(mask.shape).masked_scatter(mask, entropy),
            is_top1=torch.zeros(mask.shape, dtype=torch.bool, device=mask.device).masked_scatter(mask, top1),
            label_mask=mask,
        )

    model.forward = types.MethodType(forward, model)
    return True
