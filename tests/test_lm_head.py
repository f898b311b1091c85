"""The compact CPU LM head gives TRL's loss, metrics and gradients, while scoring only labelled positions."""

from __future__ import annotations

import copy

import pytest


def _model(tiny_mistral_dir):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_mistral_dir)
    return get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"],
                                           init_lora_weights=False))


@pytest.mark.parametrize("num_items", [None, 37])
def test_compact_head_matches_trls_fused_head(tiny_mistral_dir, num_items):
    import torch
    from trl.trainer.utils import add_fused_lm_head

    from trainer.train.lm_head import install_compact_lm_head

    reference = _model(tiny_mistral_dir)
    compact = copy.deepcopy(reference)
    add_fused_lm_head(reference.get_base_model(), outputs=("log_probs", "entropy", "is_top1"))
    add_fused_lm_head(compact.get_base_model(), outputs=("log_probs", "entropy", "is_top1"))
    assert install_compact_lm_head(compact.get_base_model())

    torch.manual_seed(1)
    ids = torch.randint(10, 500, (2, 40))
    labels = ids.clone()
    labels[0, :15] = -100  # a prompt
    labels[1, 30:] = -100  # padding
    kwargs = {"num_items_in_batch": torch.tensor(num_items)} if num_items else {}
    outs = []
    for model in (reference, compact):
        out = model(input_ids=ids, labels=labels, fused_lm_head=True, **kwargs)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        outs.append((out, grads))
    (ref, ref_grads), (new, new_grads) = outs
    torch.testing.assert_close(new.loss, ref.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(new.log_probs, ref.log_probs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(new.entropy, ref.entropy, rtol=1e-4, atol=1e-4)
    assert torch.equal(new.is_top1, ref.is_top1) and torch.equal(new.label_mask, ref.label_mask)
    assert ref_grads.keys() == new_grads.keys() and ref_grads
    for name in ref_grads:
        torch.testing.assert_close(new_grads[name], ref_grads[name], rtol=1e-4, atol=1e-6)


def test_plain_forward_and_generation_are_untouched(tiny_mistral_dir):
    import torch
    from trl.trainer.utils import add_fused_lm_head

    from trainer.train.lm_head import install_compact_lm_head

    model = _model(tiny_mistral_dir)
    ids = torch.randint(10, 500, (1, 12))
    before = model(input_ids=ids).logits
    add_fused_lm_head(model.get_base_model(), outputs=("log_probs", "entropy", "is_top1"))
    install_compact_lm_head(model.get_base_model())
    torch.testing.assert_close(model(input_ids=ids).logits, before)
    assert model.generate(input_ids=ids, max_new_tokens=3, do_sample=False).shape == (1, 15)
