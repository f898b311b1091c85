"""Where data becomes an adapter: `run_stage(cfg, stage)` trains one QLoRA stage and writes its run directory.

runs/<name>/<stage>/
    adapter/               PEFT adapter + tokenizer with the (verified) training chat template
    resolved_config.yaml   the config as trained, every stage expanded
    metrics.json           losses first/last, reduction %, tokens, throughput, peak memory, wall time
    lineage.json           base model, parent adapter, data hashes and counts, versions, seed, git commit
    split.json             which conversations went to train and eval (content hashes and source rows)
    loss.png               train and eval loss curves
    checkpoints/           resumable Trainer checkpoints (`--resume`)

Stage 2 reloads the 4-bit base, loads the stage-1 adapter as trainable and continues it; nothing is ever merged
into a 4-bit base.
"""

from __future__ import annotations

import resource
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from trainer import REPO_ROOT
from trainer.train.config import (PipelineConfig, build_lora_config, build_quantization_config, build_sft_config,
                                  dump_config, effective_dtype)
from trainer.data.readers import DataError
from trainer.data.conversations import StageData, prepare_stage_data, to_dataset
from trainer.data.readers import resolve_source
from trainer.train.lm_head import install_compact_lm_head
from trainer.train.lineage import combined_sha256, git_state, library_versions, now_iso, weights_sha256, write_json
from trainer.train.model import (BaseModelRef, ModelError, attach_adapter, load_base_model, load_tokenizer,
                                 name_base_in_adapter, resolve_base_model)
from trainer.train.templates import TrainingTemplate, select_training_template, verify_training_template

ADAPTER_WEIGHTS = "adapter_model.safetensors"
TEMPLATE_CHECK_ROWS = 64


@dataclass(frozen=True)
class StagePlan:
    """One stage, resolved and checked before any model weights load. `tokenizer` and `template` are None only in
    an offline check (`validate`) that could not get the tokenizer."""

    cfg: PipelineConfig
    stage: str
    ref: BaseModelRef
    tokenizer: Any
    template: TrainingTemplate | None
    data: StageData
    sft_config: Any
    grounded: dict[str, Any] | None = None
    """With `dataset.grounding: kb`: the rows as trained (`train`, `eval`: the same conversations with the retrieved
    KB passages in their system prompt) and the `record` the lineage keeps; `data` keeps the rows as written."""

    def training_rows(self, split: str) -> list:
        """What the trainer sees for `train` or `eval`: the grounded rows when grounding is on."""
        return self.grounded[split] if self.grounded else getattr(self.data, split)

    @property
    def stage_dir(self) -> Path:
        return self.cfg.run_dir() / self.stage


@dataclass(frozen=True)
class PipelinePlan:
    """Every stage of a pipeline planned once, with the one tokenizer they share: what `train` runs and what
    `validate` reports."""

    ref: BaseModelRef
    tokenizer: Any
    template: TrainingTemplate | None
    renderings: int
    """Renderings of the probe conversations compared when the template was checked (0 without a tokenizer)."""
    stages: Mapping[str, StagePlan]
    failed: Mapping[str, str]
    """Stage -> why its data was refused (only with `keep_going`; otherwise the DataError is raised)."""
    unchecked: tuple[str, ...]
    """What an offline check could not reach (a Hub tokenizer not cached, a Hub dataset)."""


def config_base_dir(cfg: PipelineConfig) -> Path | None:
    """Relative data paths are tried from the working directory, then from the folder above the config's."""
    return Path(cfg.source).resolve().parent.parent if cfg.source else None


def stage_is_complete(stage_dir: Path) -> bool:
    return (stage_dir / "adapter" / ADAPTER_WEIGHTS).is_file() and (stage_dir / "metrics.json").is_file()


def resolve_init(cfg: PipelineConfig, stage: str) -> tuple[Path | None, str | None]:
    """The adapter a stage continues: an earlier stage's output, a folder, or None."""
    init = cfg.stage(stage).init_from
    if init is None:
        return None, None
    if init in cfg.stages:
        adapter = cfg.run_dir() / init / "adapter"
        if not stage_is_complete(cfg.run_dir() / init):
            raise ModelError(f"stages.{stage}.init_from is {init!r}, but {adapter} holds no finished adapter; "
                             f"train it first (--stage {init})")
        return adapter, init
    path = Path(init)
    if not (path / "adapter_config.json").is_file():
        raise ModelError(f"stages.{stage}.init_from: {init} is not an adapter folder (no adapter_config.json)")
    return path, None


def plan_pipeline(cfg: PipelineConfig, stages: Sequence[str] | None = None, *, offline: bool = False,
                  keep_going: bool = False) -> PipelinePlan:
    """Resolve and check every stage before any weights load: the TRL, PEFT and bitsandbytes configs, the base
    model, its tokenizer (loaded once), the training template, and each stage's data (read once, length-checked
    and rendered with both templates). Stage 2's parent adapter is not checked here: stage 1 may not have run yet.

    `offline` (for `validate`): a Hub tokenizer comes only from the local cache and Hub datasets are skipped; what
    could not be checked is listed in `unchecked`, not pretended. `keep_going` records a stage whose data is
    refused in `failed` and plans the others."""
    names = list(cfg.stages) if stages is None else list(stages)
    build_lora_config(cfg)
    build_quantization_config(cfg.quantization)
    sft_configs = {name: build_sft_config(cfg, name, cfg.run_dir() / name / "checkpoints") for name in names}

    # The tokenizer and template, once for the whole pipeline
    unchecked: list[str] = []
    ref = resolve_base_model(cfg.model.name, cfg.model.revision)
    tokenizer = template = None
    renderings = 0
    if offline and not ref.is_local:
        try:  # offline, a Hub tokenizer can still be checked if it is in the local cache
            tokenizer = load_tokenizer(ref, cfg.model.trust_remote_code, local_files_only=True)
        except ModelError:
            unchecked.append(f"chat template and token lengths: the tokenizer of {cfg.model.name} is not cached "
                             "and the Hub is not reachable")
    else:
        tokenizer = load_tokenizer(ref, cfg.model.trust_remote_code)
    if tokenizer is not None:
        template = select_training_template(tokenizer, cfg.model.chat_template)
        renderings = verify_training_template(tokenizer, template)

    # Each stage's data, once
    plans: dict[str, StagePlan] = {}
    failed: dict[str, str] = {}
    for name in names:
        dataset = cfg.stage(name).dataset
        kind, _ = resolve_source(dataset.path, config_base_dir(cfg))
        if kind == "hub" and offline:
            unchecked.append(f"stages.{name}.dataset {dataset.path} (Hub dataset, offline)")
            continue
        try:
            data = prepare_stage_data(dataset, seed=cfg.seed, max_length=cfg.max_length, tokenizer=tokenizer,
                                      chat_template=template.text if template else None,
                                      base_dir=config_base_dir(cfg))
        except DataError as exc:
            if not keep_going:
                raise
            failed[name] = str(exc)
            continue
        grounded = None
        if dataset.grounding == "kb":
            data, grounded = ground_stage_data(data, dataset, tokenizer, template, cfg.max_length)
        if template is not None:
            rows = grounded["train"] + grounded["eval"] if grounded else data.train + data.eval
            verify_training_template(tokenizer, template, [c.messages for c in rows[:TEMPLATE_CHECK_ROWS]])
        sft_config = sft_configs[name]
        if not data.eval and sft_config.eval_strategy != "no":
            sft_config = build_sft_config(cfg, name, cfg.run_dir() / name / "checkpoints", eval_enabled=False)
        plans[name] = StagePlan(cfg, name, ref, tokenizer, template, data, sft_config, grounded)
    if tokenizer is not None:
        # Only now: every check above compared the training template with the model's own one.
        tokenizer.chat_template = template.text
    return PipelinePlan(ref, tokenizer, template, renderings, plans, failed, tuple(unchecked))


def ground_stage_data(data: StageData, dataset, tokenizer, template: TrainingTemplate | None, max_length: int
                      ) -> tuple[StageData, dict[str, Any]]:
    """The stage's rows with the KB passages retrieved for each conversation (its user turns) added to its system
    prompt, as the app and `eval --grounded` add them. The split stays that of the rows as written (content hashes
    of the data files); a row that grows past `max_length` is rejected like any too-long row, never cut."""
    from trainer.data.conversations import Conversation, check_lengths, enforce_bad_share
    from trainer.kb.loader import load_kb, resolve_kb_folder
    from trainer.kb.retrieve import RetrievalSettings, Retriever, conversation_query, grounded_messages

    kb_path = resolve_kb_folder(dataset.kb)
    retriever = Retriever(load_kb(kb_path), RetrievalSettings(k=dataset.grounding_k))

    def ground(rows):
        return [Conversation(tuple(grounded_messages(c.messages, retriever.search(conversation_query(c.messages)))),
                             c.location) for c in rows]

    train, held = ground(data.train), ground(data.eval)
    originals = {id(g): c for g, c in zip(train + held, data.train + data.eval)}
    lengths = data.train_lengths
    if tokenizer is not None:
        train, lengths = check_lengths(train, tokenizer, template.text, max_length, data.reports[0], dataset)
        held, _ = check_lengths(held, tokenizer, template.text, max_length, data.reports[-1], dataset)
        if len(data.reports) == 2:  # a separate eval file: each report counts its own rows
            data.reports[0].kept, data.reports[1].kept = len(train), len(held)
        else:
            data.reports[0].kept = len(train) + len(held)
        for report in data.reports:
            enforce_bad_share(report, dataset)
    kept = StageData(train=[originals[id(g)] for g in train], eval=[originals[id(g)] for g in held],
                     train_lengths=lengths, reports=data.reports)
    record = {"method": "kb", "kb_path": str(kb_path), "kb_version": retriever.kb.version,
              "retrieval": retriever.settings.describe(), "query": "the conversation's user turns",
              "passages_per_conversation": round(sum(len(retriever.search(conversation_query(c.messages)))
                                                     for c in kept.train) / max(1, len(kept.train)), 2)}
    return kept, {"train": train, "eval": held, "record": record}


def _peak_memory() -> dict[str, float | None]:
    import torch

    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    gpu = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return {"peak_rss_gb": round(rss_kb / 2**20, 3), "peak_gpu_gb": round(gpu, 3) if gpu is not None else None}


def _loss_reduction(first: float | None, last: float | None) -> float | None:
    if first is None or last is None or first == 0:
        return None
    return round((first - last) / first * 100, 2)


def _plot_losses(history: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    fig, ax = plt.subplots(figsize=(6.4, 4))
    if train:
        ax.plot(*zip(*train), label="train loss", color="#1f77b4")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss", color="#d62728")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (assistant tokens)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _base_model_record(ref: BaseModelRef, model) -> dict[str, Any]:
    record: dict[str, Any] = {"name": ref.name, "revision": ref.revision, "demo": ref.is_demo}
    if ref.is_local:
        record["path"] = ref.path
        record["weights_sha256"] = weights_sha256(ref.path)
        source = Path(ref.path) / "SOURCE.json"
        if source.is_file():
            import json

            record["source"] = json.loads(source.read_text(encoding="utf-8"))
    else:
        record["commit"] = getattr(model.config, "_commit_hash", None)
    return record


def _adapter_record(adapter_dir: Path, stage: str | None) -> dict[str, Any]:
    from trainer.data.conversations import file_sha256

    record: dict[str, Any] = {"path": str(adapter_dir), "stage": stage,
                              "adapter_sha256": file_sha256(adapter_dir / ADAPTER_WEIGHTS)}
    parent_lineage = adapter_dir.parent / "lineage.json"
    if parent_lineage.is_file():
        record["lineage_sha256"] = file_sha256(parent_lineage)
    return record


def compile_decoder_layers(model) -> int:
    """`torch.compile` every decoder layer in place (`nn.Module.compile`: the layer keeps its parameters, hooks and
    activation checkpointing, which wraps the compiled call); returns how many were compiled."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    for layer in layers:
        layer.compile()
    return len(layers)


def run_stage(cfg: PipelineConfig, stage: str, *, resume: bool = False, plan: StagePlan | None = None) -> Path:
    """Train one stage and write its run directory. Returns the stage directory. `plan` is the stage's plan from
    `plan_pipeline` (made here when not given)."""
    started = time.time()
    st = cfg.stage(stage)
    stage_dir = cfg.run_dir() / stage
    if resume and stage_is_complete(stage_dir):
        print(f"[{stage}] already complete in {stage_dir}; skipping (--resume)", flush=True)
        return stage_dir

    # Plan: config, tokenizer, template and data are all checked before any weights load
    if plan is None:
        plan = plan_pipeline(cfg, [stage]).stages[stage]
    # The parent adapter exists only once its stage has finished: checked when this stage starts, not up front.
    init_from, parent_stage = resolve_init(cfg, stage)
    print(f"[{stage}] {plan.data.summary()}", flush=True)
    for report in plan.data.reports:
        for error in report.errors[:10]:
            print(f"[{stage}]   skipped {error}", flush=True)
        if report.bad > 10:
            print(f"[{stage}]   ... {report.bad - 10} more skipped rows (see lineage.json)", flush=True)
    if plan.grounded:
        g = plan.grounded["record"]
        print(f"[{stage}] grounded in the knowledge base {g['kb_version'].get('version')} ({g['kb_path']}): "
              f"{g['passages_per_conversation']} passages per conversation in its system prompt", flush=True)
    if plan.template.family == "mistral" and any(c.messages[0]["role"] == "system"
                                                 for c in plan.training_rows("train")):
        print(f"[{stage}] note: Mistral's template shows a system prompt only with the final user turn, so "
              "training conversations (which end with an answer) render without it", flush=True)

    from transformers.trainer_utils import get_last_checkpoint

    checkpoint = None
    checkpoints_dir = stage_dir / "checkpoints"
    if resume and checkpoints_dir.is_dir():
        checkpoint = get_last_checkpoint(str(checkpoints_dir))
    if resume and checkpoint is None:
        print(f"[{stage}] --resume: no checkpoint in {checkpoints_dir}; starting the stage from the beginning",
              flush=True)
    from accelerate import PartialState

    state = PartialState()  # under `accelerate launch`, only the main process writes the run directory
    if state.is_main_process:
        if checkpoint is None and stage_dir.exists():
            shutil.rmtree(stage_dir)  # a fresh run never mixes with an older one's files
        stage_dir.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, stage_dir / "resolved_config.yaml", stage=stage)
    state.wait_for_everyone()

    import torch

    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)

    # Load the 4-bit base and attach (or continue) the adapter
    model = load_base_model(plan.ref, cfg.quantization, attn_implementation=cfg.model.attn_implementation,
                            trust_remote_code=cfg.model.trust_remote_code, bf16=st.bf16,
                            padding_free=st.padding_free)
    base_record = _base_model_record(plan.ref, model)
    model = attach_adapter(model, cfg, init_from)
    trainable, total = model.get_nb_trainable_parameters()
    weights = "4-bit " + cfg.quantization.quant_type if cfg.quantization.load_in_4bit else "unquantized"
    print(f"[{stage}] base {cfg.model.name} ({weights}), "
          f"LoRA r={cfg.lora.r}: {trainable:,} trainable of {total:,} parameters"
          + (f", continuing {init_from}" if init_from else ""), flush=True)

    # Train
    from trl import SFTTrainer

    trainer = SFTTrainer(
        model=model,
        args=plan.sft_config,
        train_dataset=to_dataset(plan.training_rows("train")),
        eval_dataset=to_dataset(plan.training_rows("eval")) if plan.data.eval else None,
        processing_class=plan.tokenizer,
    )
    install_compact_lm_head(trainer.model.get_base_model())  # no-op on GPUs, where TRL's Triton kernels run
    compiled_layers = compile_decoder_layers(trainer.model) if st.compile_layers else 0
    if compiled_layers:
        print(f"[{stage}] compile_layers: {compiled_layers} decoder layers compiled (the first steps include "
              "compiling)", flush=True)
    eval_first = None
    if plan.data.eval and st.eval_before_training and checkpoint is None:
        eval_first = trainer.evaluate()["eval_loss"]
        print(f"[{stage}] eval loss before training: {eval_first:.4f}", flush=True)
    elif checkpoint is not None:
        print(f"[{stage}] resuming from {checkpoint}", flush=True)
    train_started = time.time()
    output = trainer.train(resume_from_checkpoint=checkpoint)
    train_seconds = time.time() - train_started
    history = list(trainer.state.log_history)
    eval_last = None
    if plan.data.eval:
        last = next((h for h in reversed(history) if "eval_loss" in h), None)
        if last is None or last.get("step") != trainer.state.global_step:  # no eval at the final step yet
            trainer.evaluate()
            history = list(trainer.state.log_history)
            last = history[-1]
        eval_last = last["eval_loss"]
        if eval_first is None and checkpoint is not None:
            eval_first = next((h["eval_loss"] for h in history if "eval_loss" in h), None)

    # Save the adapter with the exact template it was trained with
    adapter_dir = stage_dir / "adapter"
    trainer.save_model(str(adapter_dir))  # adapter + tokenizer; gathers sharded (FSDP) weights first
    if not state.is_main_process:
        return stage_dir
    name_base_in_adapter(adapter_dir, cfg)

    train_losses = [h["loss"] for h in history if "loss" in h]
    tokens = next((h["num_tokens"] for h in reversed(history) if "num_tokens" in h), None)
    if tokens is None or checkpoint is not None:
        tokens = int(sum(plan.data.train_lengths) * (output.metrics.get("epoch") or 1))
    steps = trainer.state.global_step
    metrics = {
        "stage": stage,
        "train_loss_first": train_losses[0] if train_losses else None,
        "train_loss_last": train_losses[-1] if train_losses else None,
        "train_loss_mean": output.training_loss,
        "train_loss_reduction_pct": _loss_reduction(train_losses[0] if train_losses else None,
                                                    train_losses[-1] if train_losses else None),
        "eval_loss_first": eval_first,
        "eval_loss_last": eval_last,
        "eval_loss_reduction_pct": _loss_reduction(eval_first, eval_last),
        "eval_perplexity_last": round(float(torch.exp(torch.tensor(eval_last))), 4) if eval_last is not None else None,
        "optimizer_steps": steps,
        "epochs": output.metrics.get("epoch"),
        "train_conversations": len(plan.data.train),
        "eval_conversations": len(plan.data.eval),
        "tokens_seen": int(tokens),
        "train_seconds": round(train_seconds, 2),
        "tokens_per_second": round(tokens / train_seconds, 2) if train_seconds else None,
        "samples_per_second": output.metrics.get("train_samples_per_second"),
        **_peak_memory(),
        "wall_seconds": round(time.time() - started, 2),
        "resumed_from": Path(checkpoint).name if checkpoint else None,
        "device": (torch.cuda.get_device_name(0) if torch.cuda.is_available()
                   else f"cpu ({torch.get_num_threads()} threads)"),
        "liger_kernel": bool(plan.sft_config.use_liger_kernel),
        "compiled_layers": compiled_layers,
    }
    write_json(stage_dir / "metrics.json", metrics)
    write_json(stage_dir / "split.json", plan.data.split_record())
    lineage = {
        "run": cfg.name,
        "stage": stage,
        "created": now_iso(),
        "base_model": base_record,
        "quantization": ({"load_in_4bit": True, "quant_type": cfg.quantization.quant_type,
                          "double_quant": cfg.quantization.double_quant,
                          "compute_dtype": effective_dtype(cfg.quantization.compute_dtype)}
                         if cfg.quantization.load_in_4bit else {"load_in_4bit": False}),
        "parent_adapter": _adapter_record(init_from, parent_stage) if init_from else None,
        "adapter_sha256": _adapter_record(adapter_dir, stage)["adapter_sha256"],
        "chat_template": {"family": plan.template.family, "sha256": plan.template.sha256},
        "datasets": [r.to_dict() for r in plan.data.reports],
        "split": {
            "method": "seeded content hash" if not cfg.stage(stage).dataset.eval_path else "separate eval file",
            "seed": cfg.seed,
            "train_rows": len(plan.data.train),
            "eval_rows": len(plan.data.eval),
            "train_sha256": combined_sha256([c.content_hash for c in plan.data.train]),
            "eval_sha256": combined_sha256([c.content_hash for c in plan.data.eval]),
        },
        "bad_rows": [str(e) for r in plan.data.reports for e in r.errors],
        "grounding": plan.grounded["record"] if plan.grounded else None,
        "seed": cfg.seed,
        "libraries": library_versions(),
        "git": git_state(REPO_ROOT),
        "command": " ".join(sys.argv),
    }
    write_json(stage_dir / "lineage.json", lineage)
    if eval_first is not None and not any(h.get("step") == 0 and "eval_loss" in h for h in history):
        history.insert(0, {"step": 0, "eval_loss": eval_first})  # train() starts a fresh log after that eval
    _plot_losses(history, stage_dir / "loss.png", f"{cfg.name} / {stage}")
    print(f"[{stage}] done in {metrics['wall_seconds']:.0f}s: train loss {metrics['train_loss_first']} -> "
          f"{metrics['train_loss_last']}, eval loss {eval_first} -> {eval_last}, "
          f"{metrics['tokens_per_second']} tokens/s; adapter in {adapter_dir}", flush=True)
    return stage_dir


def run_pipeline(cfg: PipelineConfig, stage: str = "all", *, resume: bool = False) -> list[Path]:
    """Run one stage or all of them in order. Later stages continue earlier ones as configured."""
    names = list(cfg.stages) if stage == "all" else [stage]
    for name in names:
        cfg.stage(name)  # unknown names fail before anything runs
    # Plan every stage that will run before any trains, so a typo in stage 2 does not surface after stage 1's
    # hours; each stage then trains on exactly what was checked.
    todo = [name for name in names if not (resume and stage_is_complete(cfg.run_dir() / name))]
    plans = plan_pipeline(cfg, todo).stages if todo else {}
    return [run_stage(cfg, name, resume=resume, plan=plans.get(name)) for name in names]


