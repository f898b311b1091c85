"""Model loading, LoRA placement, adapter checks and padding-free attention, on a tiny random Mistral."""

from __future__ import annotations

import json

import pytest
from helpers import REPO

from trainer.train.config import load_config
from trainer.train.model import (ModelError, attach_adapter, check_adapter_matches, load_base_model,
                                 name_base_in_adapter, resolve_base_model)

PROJECTIONS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def tiny_config(tiny_mistral_dir, *overrides):
    return load_config(REPO / "configs" / "paper.yaml", [f"model.name={tiny_mistral_dir}", *overrides])


def test_resolve_base_model_accepts_hub_ids_folders_and_the_demo_name(tiny_mistral_dir, demo_model_dir):
    hub = resolve_base_model("mistralai/Mistral-7B-Instruct-v0.3", "main")
    assert (hub.path, hub.revision, hub.is_local, hub.is_demo) == ("mistralai/Mistral-7B-Instruct-v0.3", "main",
                                                                   False, False)
    local = resolve_base_model(str(tiny_mistral_dir))
    assert local.is_local and not local.is_demo and local.path == str(tiny_mistral_dir)
    demo = resolve_base_model("smollm2-135m-instruct")
    assert demo.is_demo and demo.path == str(demo_model_dir)
    assert (demo_model_dir / "config.json").is_file() and (demo_model_dir / "SOURCE.json").is_file()
    with pytest.raises(ModelError, match="not a local folder, a Hub id"):
        resolve_base_model("not a model")


def test_base_loads_in_4bit_nf4_on_cpu_and_lora_wraps_every_projection(tiny_mistral_dir):
    import bitsandbytes as bnb

    cfg = tiny_config(tiny_mistral_dir)
    model = load_base_model(resolve_base_model(str(tiny_mistral_dir)), cfg.quantization)
    quantized = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantized) == 2 * len(PROJECTIONS)  # two layers, seven projections each
    assert all(m.weight.quant_type == "nf4" for m in quantized)

    peft_model = attach_adapter(model, cfg)
    wrapped = {name.split(".")[-1] for name, module in peft_model.named_modules() if hasattr(module, "lora_A")}
    assert wrapped == PROJECTIONS
    trainable = {name for name, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    lora = next(m for m in peft_model.modules() if hasattr(m, "lora_A"))
    assert lora.r["default"] == 16 and lora.scaling["default"] == 32 / 16


def test_unquantized_base_when_4bit_is_off(tiny_mistral_dir):
    import torch

    cfg = tiny_config(tiny_mistral_dir, "quantization.load_in_4bit=false")
    model = load_base_model(resolve_base_model(str(tiny_mistral_dir)), cfg.quantization)
    assert model.model.layers[0].self_attn.q_proj.weight.dtype == torch.float32
    assert not getattr(model, "is_loaded_in_4bit", False)


def test_continuing_an_adapter_checks_base_and_lora_shape(tiny_mistral_dir, tmp_path):
    cfg = tiny_config(tiny_mistral_dir)
    model = load_base_model(resolve_base_model(str(tiny_mistral_dir)), cfg.quantization)
    adapter = tmp_path / "adapter"
    attach_adapter(model, cfg).save_pretrained(adapter)
    name_base_in_adapter(adapter, cfg)
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_mistral_dir)
    check_adapter_matches(adapter, cfg)  # same base, same shape: fine

    with pytest.raises(ModelError, match="adapter has r=16, config says 8"):
        check_adapter_matches(adapter, tiny_config(tiny_mistral_dir, "lora.r=8"))
    other = load_config(REPO / "configs" / "paper.yaml")
    with pytest.raises(ModelError, match="was trained on .* but this config's base model is "
                                         "'mistralai/Mistral-7B-Instruct-v0.3'"):
        check_adapter_matches(adapter, other)
    with pytest.raises(ModelError, match="not an adapter folder"):
        check_adapter_matches(tmp_path, cfg)


def test_continued_adapter_is_trainable_and_starts_from_the_saved_weights(tiny_mistral_dir, tmp_path):
    import torch

    cfg = tiny_config(tiny_mistral_dir, "quantization.load_in_4bit=false")
    ref = resolve_base_model(str(tiny_mistral_dir))
    first = attach_adapter(load_base_model(ref, cfg.quantization), cfg)
    with torch.no_grad():  # stand-in for training: give lora_B non-zero values
        for name, p in first.named_parameters():
            if "lora_B" in name:
                p.fill_(0.01)
    first.save_pretrained(tmp_path / "a")
    name_base_in_adapter(tmp_path / "a", cfg)
    again = attach_adapter(load_base_model(ref, cfg.quantization), cfg, init_from=tmp_path / "a")
    b_weights = [p for n, p in again.named_parameters() if "lora_B" in n]
    assert b_weights and all(p.requires_grad for p in b_weights)
    assert all(torch.allclose(p, torch.full_like(p, 0.01)) for p in b_weights)


def test_padding_free_attention_matches_separate_forward_passes(tiny_mistral_dir):
    """A packed row through `sdpa_varlen` gives each conversation the logits it gets alone: no cross-talk."""
    import torch
    from transformers import AutoModelForCausalLM

    from trainer.train.attention import register_varlen_attention

    torch.manual_seed(0)
    lengths = [7, 12, 5]
    seqs = [torch.randint(10, 500, (n,)) for n in lengths]
    plain = AutoModelForCausalLM.from_pretrained(tiny_mistral_dir, attn_implementation="sdpa")
    packed = AutoModelForCausalLM.from_pretrained(tiny_mistral_dir, attn_implementation=register_varlen_attention())
    with torch.no_grad():
        alone = [plain(input_ids=s[None]).logits[0] for s in seqs]
        cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
        out = packed(input_ids=torch.cat(seqs)[None],
                     position_ids=torch.cat([torch.arange(n) for n in lengths])[None],
                     cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max(lengths), max_length_k=max(lengths)).logits[0]
        # The same row through plain SDPA without boundaries would attend across conversations:
        leaky = plain(input_ids=torch.cat(seqs)[None]).logits[0]
    for i, expected in enumerate(alone):
        start = sum(lengths[:i])
        assert torch.allclose(out[start:start + lengths[i]], expected, atol=1e-5)
    assert not torch.allclose(leaky[lengths[0]:lengths[0] + lengths[1]], alone[1], atol=1e-3)


@pytest.mark.slow
def test_evaluating_a_4bit_model_does_not_break_its_gradients(tiny_mistral_dir):
    """An eval pass (no grad) before training must not change what the backward pass computes."""
    import torch

    cfg = tiny_config(tiny_mistral_dir, "lora.target_modules=[q_proj, v_proj]")
    ref = resolve_base_model(str(tiny_mistral_dir))
    ids = torch.randint(10, 500, (1, 64))

    def lora_grads(evaluate_first: bool):
        model = attach_adapter(load_base_model(ref, cfg.quantization), cfg)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.fill_(0.05)
        if evaluate_first:
            model.eval()
            with torch.no_grad():
                model(input_ids=ids)
            model.train()
        model(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    plain, after_eval = lora_grads(False), lora_grads(True)
    assert plain and set(after_eval) == set(plain)
    for name in plain:  # gradients came back, through the frozen 4-bit layers, before they are compared
        for grads in (plain, after_eval):
            assert grads[name] is not None and grads[name].abs().sum() > 0, name
        torch.testing.assert_close(after_eval[name], plain[name], rtol=1e-3, atol=1e-6)
