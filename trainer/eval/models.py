"""What the evaluation reads and loads before it generates: the run's finished stages, the base and adapters in one
model, how answers are decoded, held-out losses (assistant tokens, as trained) and each stage's loss reduction."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

from trainer.eval import EvalError
from trainer.inference.model import AdapterModel, GenerationSettings
from trainer.train.rundir import RunError, StageRun, finished_stages, read_stage


def read_run(run_dir: Path) -> list[StageRun]:
    """The run's finished stages, in pipeline order, each with the chat template saved with its adapter."""
    if not run_dir.is_dir():
        raise EvalError(f"{run_dir}: no such run directory")
    try:
        stages = [read_stage(run_dir, s) for s in finished_stages(run_dir)]
        for stage in stages:
            _ = stage.template  # read now, so a missing one fails before any weights load
    except RunError as exc:
        raise EvalError(str(exc).replace("no finished stage", "no adapters to evaluate")) from None
    base = {s.cfg.model.name for s in stages}
    if len(base) > 1:
        raise EvalError(f"{run_dir}: stages were trained on different base models ({', '.join(sorted(base))}); "
                        "evaluate them separately")
    return stages


def reference_prompts(conversations: Iterable) -> list[dict[str, Any]]:
    """One prompt per assistant turn of each held-out conversation: the messages before it, and the answer.
    Ordered first answers first (every conversation's first answer, then every second one ...), so a `--limit`
    spreads over the conversations."""
    out = []
    for c, conv in enumerate(conversations):
        messages = list(conv.messages)
        turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        for t, i in enumerate(turns):
            out.append((t, c, {"id": f"{conv.content_hash[:12]}#{i}", "messages": messages[:i],
                               "reference": messages[i]["content"]}))
    return [item for _, _, item in sorted(out, key=lambda x: (x[0], x[1]))]


def loss_reduction(stage: StageRun) -> dict[str, Any]:
    """First vs last logged loss, train and eval: from the log history where it is kept, else metrics.json."""
    m = stage.metrics
    history = stage.log_history()
    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    if m.eval_loss_first is not None and not any(s == 0 for s, _ in evals):
        evals.insert(0, (0, m.eval_loss_first))  # the pre-training eval is logged before train() starts
    if not train and m.train_loss_first is not None:
        train = [(1, m.train_loss_first), (m.optimizer_steps or 1, m.train_loss_last)]
    if m.eval_loss_last is not None and (not evals or evals[-1][1] != m.eval_loss_last):
        evals.append((m.optimizer_steps or 1, m.eval_loss_last))  # the final eval, after the checkpoint

    def pct(first, last):
        return round((first - last) / first * 100, 2) if first and last is not None else None

    tf, tl = (train[0][1], train[-1][1]) if train else (None, None)
    ef, el = (evals[0][1], evals[-1][1]) if evals else (None, None)
    return {"train_loss_first": tf, "train_loss_last": tl, "train_loss_reduction_pct": pct(tf, tl),
            "eval_loss_first": ef, "eval_loss_last": el, "eval_loss_reduction_pct": pct(ef, el),
            "optimizer_steps": m.optimizer_steps, "source": "trainer log history" if history else
            "metrics.json", "train_curve": train, "eval_curve": evals}


GREEDY = GenerationSettings(temperature=0)
"""The eval's decoding: greedy, so answers are reproducible (the repetition penalty is the app's, since small models
loop under plain greedy decoding)."""


def describe_generation(generation: GenerationSettings, batch_size: int, seed: int, engine=None) -> dict[str, Any]:
    """How the answers were generated, as results.json records it."""
    if engine is not None:
        return {"decoding": "greedy (temperature 0)", "max_new_tokens": generation.max_new_tokens,
                "repetition_penalty": generation.repetition_penalty if engine.send_repetition_penalty
                else "the server's default", "engine": "openai", "concurrency": engine.concurrency, "seed": seed}
    decoding = "greedy (do_sample=False)" if generation.temperature <= 0 else \
        f"sampling (temperature={generation.temperature}, top_p={generation.top_p})"
    return {"decoding": decoding, "max_new_tokens": generation.max_new_tokens,
            "repetition_penalty": generation.repetition_penalty, "batch_size": batch_size, "padding": "left",
            "seed": seed, "engine": "local"}


def conversation_losses(model, tokenizer, template: str, conversations: Sequence, batch_size: int = 2
                        ) -> list[list[float]]:
    """[nll_sum, tokens] per conversation over its assistant tokens (as trained: TRL's assistant-only loss),
    rendered with `template`. Logits are computed only at the scored positions."""
    import torch
    import torch.nn.functional as F

    encoded = []
    for conv in conversations:
        enc = tokenizer.apply_chat_template(list(conv.messages), chat_template=template, tokenize=True,
                                            return_dict=True, return_assistant_tokens_mask=True)
        encoded.append((list(enc["input_ids"]), list(enc["assistant_masks"])))
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[list[float]] = [[0.0, 0.0] for _ in encoded]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
    for start in range(0, len(order), max(1, batch_size)):
        chunk = order[start:start + batch_size]
        width = max(len(encoded[i][0]) for i in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        targets = []
        for row, i in enumerate(chunk):
            tokens, mask = encoded[i]
            ids[row, :len(tokens)] = torch.tensor(tokens)
            attention[row, :len(tokens)] = 1
            targets.append([t for t in range(1, len(tokens)) if mask[t]])
        keep = sorted({t - 1 for ts in targets for t in ts})
        if not keep:
            continue
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=attention.to(device),
                           logits_to_keep=torch.tensor(keep, device=device)).logits
        column = {p: c for c, p in enumerate(keep)}
        for row, i in enumerate(chunk):
            if not targets[row]:
                continue
            cols = torch.tensor([column[t - 1] for t in targets[row]], device=logits.device)
            gold = ids[row, targets[row]].to(logits.device)
            nll = F.cross_entropy(logits[row, cols].float(), gold, reduction="sum")
            out[i] = [float(nll), float(len(targets[row]))]
    return out


def load_models(stages: Sequence[StageRun], load_in_4bit: bool | None) -> tuple[AdapterModel, Any]:
    """The base once (4-bit as the run trained, unless overridden) and every stage's adapter, with the template it
    was trained with, in one model. Returns it and the quantization used."""
    import dataclasses

    from trainer.inference.model import AdapterSource, load_adapter_model
    from trainer.train.model import ModelError, read_adapter_config, resolve_base_model

    cfg = stages[-1].cfg
    quant = cfg.quantization if load_in_4bit is None else dataclasses.replace(cfg.quantization,
                                                                               load_in_4bit=load_in_4bit)
    for stage in stages:
        trained_on = read_adapter_config(stage.adapter_dir).get("base_model_name_or_path")
        if trained_on and trained_on != cfg.model.name:
            raise ModelError(f"{stage.adapter_dir}: trained on {trained_on!r}, but the run's base is "
                             f"{cfg.model.name!r}")
    served = load_adapter_model(resolve_base_model(cfg.model.name, cfg.model.revision), quant,
                                [AdapterSource(s.name, str(s.adapter_dir), template=s.template) for s in stages],
                                attn_implementation=cfg.model.attn_implementation,
                                trust_remote_code=cfg.model.trust_remote_code)
    return served, quant
