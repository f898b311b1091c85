"""Padding-free attention without FlashAttention: SDPA run once per packed conversation.

TRL's padding-free collator flattens a batch into one row and passes the conversation boundaries as
`cu_seq_lens_q`. FlashAttention consumes those directly; plain SDPA would instead need a dense block-diagonal mask,
which pushes PyTorch onto its memory-hungry math kernel (on a CPU, batch 2 x 2048 tokens keeps ~9 GB of attention
probabilities for the backward pass). `sdpa_varlen` instead slices the packed row at the boundaries and calls SDPA
with `is_causal=True` on each conversation, which selects the fused flash kernels on CPU and GPU alike: no pad
tokens, no attention across conversations, memory linear in length.

It is only meant for training batches from the padding-free collator; for generation use `sdpa`.
"""

from __future__ import annotations

VARLEN_ATTENTION = "sdpa_varlen"


def varlen_sdpa_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                          is_causal=None, **kwargs):
    """Attention over a packed row: one causal SDPA call per conversation (shapes as transformers passes them:
    query/key/value are [batch, heads, tokens, head_dim]; returns [batch, tokens, heads, head_dim])."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds = kwargs.get("cu_seq_lens_q")
    if bounds is None or query.shape[0] != 1 or query.shape[2] != key.shape[2]:
        # Not a packed training row (e.g. an unpadded forward pass): plain causal SDPA is exact here.
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    edges = bounds.tolist()
    outputs = []
    for start, end in zip(edges[:-1], edges[1:]):
        if end <= start:
            continue
        out, _ = sdpa_attention_forward(module, query[:, :, start:end], key[:, :, start:end],
                                        value[:, :, start:end], None, dropout=dropout, scaling=scaling,
                                        is_causal=True)
        outputs.append(out)
    return torch.cat(outputs, dim=1), None


def register_varlen_attention() -> str:
    """Make `attn_implementation="sdpa_varlen"` available to transformers models; returns the name.

    It is registered as an attention function only, with no mask function, so transformers builds no mask."""
    from transformers import AttentionInterface

    AttentionInterface.register(VARLEN_ATTENTION, varlen_sdpa_attention)
    return VARLEN_ATTENTION
