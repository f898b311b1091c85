"""Where data becomes an adapter: `run_stage(cfg, stage)` trains one QLoRA stage and writes its run directory.

runs/<name>/<stage>/
    adapter/               PEFT adapter + tokenizer with the (verified) training chat template
    resolved_config.yaml   the config as trained, every stage expanded
    metrics.json           losses first/last, reduction %, tokens, throughput, peak memory, wall time
    lineage.json           base model, parent adapter, data hashes and counts, versions, seed, git commit
    split.json             which conversations went to train and eval (content hashes and source rows)
    loss.png               train and eval loss curves
    checkpoints/           resumable Trainer checkpoints (`--resume`)

The files are named, written and read by `trainer.train.rundir.StageFolder`. A stage runs in three steps: set up
(reports, parent adapter, fresh folder, model), train, record. Stage 2 reloads the 4-bit base, loads the stage-1
adapter as trainable and continues it; nothing is ever merged into a 4-bit base.

Under data parallel (`torchrun`, `accelerate launch`) every process runs the same stages: they train together, only
the main process prints and writes the folder, and every process waits for the folder to be finished before it
leaves a stage, so the next stage's `init_from` finds the adapter on every process.
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from trainer import REPO_ROOT
from trainer.train.config import PipelineConfig, build_lora_config, build_sft_config, pipeline_precision
from trainer.train.device import Precision, check_torch_build, detect_device, one_process_per_gpu
from trainer.train.memory_plan import apply_plan, check_stage_memory
from trainer.data.conversations import StageData, prepare_stage_data, to_dataset
from trainer.data.readers import DataError, resolve_source
from trainer.train.lm_head import install_compact_lm_head
from trainer.train.precision_watch import keep_trainable_weights_fp32, precision_watch
from trainer.train.lineage import (AdapterRecord, BaseModelRecord, DatasetRecord, Lineage, QuantizationRecord,
                                   SplitRecord, TemplateRecord, git_state, library_versions, now_iso, weights_sha256)
from trainer.train.model import (BaseModelRef, ModelError, attach_adapter, base_dtypes, load_base_model,
                                 load_tokenizer, name_base_in_adapter, resolve_base_model)
from trainer.train.rundir import StageFolder, StageMetrics, StageSplit, plot_losses
from trainer.train.templates import TrainingTemplate, select_training_template, verify_training_template

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
    precision: Precision
    """The pipeline's precision on this device."""
    grounded: dict[str, Any] | None = None
    """With `dataset.grounding: kb`: the rows as trained (`train`, `eval`: the same conversations with the retrieved
    KB passages in their system prompt) and the `record` the lineage keeps; `data` keeps the rows as written."""
    memory: Any = None
    """The stage's memory plan (`trainer.train.memory_plan.StagePlanResult`; None: the shapes were not readable)."""
    memory_note: str | None = None
    """One line on the memory plan, for the stage's report."""

    @property
    def planned_peak_gb(self) -> float | None:
        """The plan's predicted peak for this stage, GiB (None: not planned)."""
        return self.memory.memory.peak_gb if self.memory is not None else None

    def training_rows(self, split: str) -> list:
        """What the trainer sees for `train` or `eval`: the grounded rows when grounding is on."""
        return self.grounded[split] if self.grounded else getattr(self.data, split)

    @property
    def folder(self) -> StageFolder:
        return StageFolder(self.cfg.run_dir() / self.stage)


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


def resolve_init(cfg: PipelineConfig, stage: str) -> tuple[Path | None, str | None]:
    """The adapter a stage continues: an earlier stage's output, a folder, or None."""
    init = cfg.stage(stage).init_from
    if init is None:
        return None, None
    if init in cfg.stages:
        parent = StageFolder(cfg.run_dir() / init)
        if not parent.is_finished():
            raise ModelError(f"stages.{stage}.init_from is {init!r}, but {parent.adapter} holds no finished adapter; "
                             f"train it first (--stage {init})")
        return parent.adapter, init
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
    # The device first: a torch build without kernels for this GPU, or a precision it cannot run, is named now
    device = detect_device()
    check_torch_build(device)
    one_process_per_gpu(device)
    precision = pipeline_precision(cfg, device)
    base_dtypes(cfg.quantization, precision, device)  # an explicit compute dtype the device lacks is refused here
    build_lora_config(cfg)
    sft_configs = {name: build_sft_config(cfg, name, cfg.run_dir() / name / "checkpoints", device=device)
                   for name in names}

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
        memory = check_stage_memory(cfg, name, device, data.train_lengths if tokenizer is not None else None)
        stage_cfg = apply_plan(cfg, memory) if memory is not None and memory.fitted else cfg
        sft_config = sft_configs[name] if stage_cfg is cfg else None
        if sft_config is None or (not data.eval and sft_config.eval_strategy != "no"):
            sft_config = build_sft_config(stage_cfg, name, cfg.run_dir() / name / "checkpoints",
                                          eval_enabled=bool(data.eval), device=device)
        result = memory.stages[name] if memory is not None else None
        plans[name] = StagePlan(stage_cfg, name, ref, tokenizer, template, data, sft_config, precision, grounded,
                                memory=result, memory_note=memory.render_short(name) if memory else None)
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


def _peak_memory() -> tuple[float, float | None]:
    """Peak resident memory and peak GPU memory (None without CUDA) of this process, GiB."""
    import torch

    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    gpu = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return round(rss_kb / 2**20, 3), round(gpu, 3) if gpu is not None else None


def _loss_reduction(first: float | None, last: float | None) -> float | None:
    if first is None or last is None or first == 0:
        return None
    return round((first - last) / first * 100, 2)


def _base_model_record(ref: BaseModelRef, model) -> BaseModelRecord:
    if not ref.is_local:
        return BaseModelRecord(ref.name, ref.revision, ref.is_demo, commit=getattr(model.config, "_commit_hash", None))
    import json

    source_file = Path(ref.path) / "SOURCE.json"  # where the weights came from (the demo model's upstream)
    source = json.loads(source_file.read_text(encoding="utf-8")) if source_file.is_file() else None
    return BaseModelRecord(ref.name, ref.revision, ref.is_demo, path=ref.path, weights_sha256=weights_sha256(ref.path),
                           source=source)


def _parent_record(adapter_dir: Path, stage: str | None) -> AdapterRecord:
    from trainer.data.conversations import file_sha256

    folder = StageFolder(adapter_dir.parent)
    return AdapterRecord(str(adapter_dir), stage, file_sha256(folder.adapter_weights),
                         file_sha256(folder.lineage) if folder.lineage.is_file() else None)


def compile_decoder_layers(model) -> int:
    """`torch.compile` every decoder layer in place (`nn.Module.compile`: the layer keeps its parameters, hooks and
    activation checkpointing, which wraps the compiled call); returns how many were compiled."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    for layer in layers:
        layer.compile()
    return len(layers)


# The processes of a run: one, or several under data parallel

def process_state():
    """accelerate's view of this run's processes (one, or one per rank under `torchrun` / `accelerate launch`), on
    the device the stage's SFTConfig chose: without CUDA the processes train on the CPU and talk over gloo."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def _say(state, stage: str, message: str) -> None:
    """Print a line of the stage's report, once per run (the main process's)."""
    if state.is_main_process:
        print(f"[{stage}] {message}", flush=True)


# A stage in three steps: set up, train, record

@dataclass
class StageSetup:
    """What a stage starts from, the same on every process."""

    init_from: Path | None
    """The adapter it continues (None: a fresh one)."""
    parent_stage: str | None
    """The stage of this run that trained `init_from`."""
    checkpoint: str | None
    """The checkpoint `--resume` continues from."""
    model: Any
    """The 4-bit base with the adapter attached, trainable."""
    base_record: BaseModelRecord
    """The base as lineage.json records it (weights hashed before the adapter is attached)."""


@dataclass
class TrainedStage:
    """What training left for the records."""

    trainer: Any
    """The SFTTrainer, which saves the adapter."""
    output: Any
    """`trainer.train()`'s TrainOutput."""
    history: list[dict[str, Any]]
    """The Trainer's log: losses by step, the eval before training at step 0."""
    train_seconds: float
    """Seconds in `trainer.train()`."""
    eval_first: float | None
    """Held-out loss before training (None without one)."""
    eval_last: float | None
    """Held-out loss after the last step (None without held-out rows)."""
    compiled_layers: int
    """Decoder layers compiled (`compile_layers`)."""
    watch: Any = None
    """The precision watch: skipped steps, non-finite gradient norms, the loss scale."""


def report_plan(plan: StagePlan, state) -> None:
    """The stage's data report: what was read, kept and skipped, grounding, template notes."""
    stage = plan.stage
    _say(state, stage, plan.data.summary())
    for report in plan.data.reports:
        for error in report.errors[:10]:
            _say(state, stage, f"  skipped {error}")
        if report.bad > 10:
            _say(state, stage, f"  ... {report.bad - 10} more skipped rows (see lineage.json)")
    if plan.memory_note:
        _say(state, stage, plan.memory_note)
    if plan.grounded:
        g = plan.grounded["record"]
        _say(state, stage, f"grounded in the knowledge base {g['kb_version'].get('version')} ({g['kb_path']}): "
                           f"{g['passages_per_conversation']} passages per conversation in its system prompt")
    if plan.template.family == "mistral" and any(c.messages[0]["role"] == "system"
                                                 for c in plan.training_rows("train")):
        _say(state, stage, "note: Mistral's template shows a system prompt only with the final user turn, so "
                           "training conversations (which end with an answer) render without it")


def setup_stage(plan: StagePlan, state, *, resume: bool) -> StageSetup:
    """Report the plan, find the parent adapter and the checkpoint to resume, start the stage folder (main process)
    and load the 4-bit base with the adapter attached."""
    cfg, stage, folder, st = plan.cfg, plan.stage, plan.folder, plan.cfg.stage(plan.stage)
    if not state.is_main_process:  # one progress bar per run, the main process's
        import datasets
        import transformers

        transformers.utils.logging.disable_progress_bar()
        datasets.disable_progress_bars()
    report_plan(plan, state)
    # The parent adapter exists only once its stage has finished: checked when this stage starts, not up front.
    init_from, parent_stage = resolve_init(cfg, stage)

    from transformers.trainer_utils import get_last_checkpoint

    checkpoint = get_last_checkpoint(str(folder.checkpoints)) if resume and folder.checkpoints.is_dir() else None
    if resume and checkpoint is None:
        _say(state, stage, f"--resume: no checkpoint in {folder.checkpoints}; starting the stage from the beginning")
    state.wait_for_everyone()  # every process has looked for its checkpoint before the folder changes
    if state.is_main_process:
        folder.start(cfg, stage, fresh=checkpoint is None)
    state.wait_for_everyone()

    import torch

    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    model = load_base_model(plan.ref, cfg.quantization, attn_implementation=cfg.model.attn_implementation,
                            trust_remote_code=cfg.model.trust_remote_code, precision=plan.precision,
                            padding_free=st.padding_free)
    base_record = _base_model_record(plan.ref, model)
    model = attach_adapter(model, cfg, init_from)
    keep_trainable_weights_fp32(model)  # fp32 master weights under any mixed precision (fp16 AMP demands it)
    trainable, total = model.get_nb_trainable_parameters()
    weights = "4-bit " + cfg.quantization.quant_type if cfg.quantization.load_in_4bit else "unquantized"
    processes = f", {state.num_processes} processes" if state.num_processes > 1 else ""
    _say(state, stage, f"precision {plan.precision.name}: {plan.precision.reason}")
    _say(state, stage, f"base {cfg.model.name} ({weights}), LoRA r={cfg.lora.r}: {trainable:,} trainable of "
                       f"{total:,} parameters" + (f", continuing {init_from}" if init_from else "") + processes)
    return StageSetup(init_from, parent_stage, checkpoint, model, base_record)


def train_stage(plan: StagePlan, setup: StageSetup, state) -> TrainedStage:
    """TRL's SFTTrainer on the stage's rows: the eval before, the training, the eval after the last step. Every
    process runs it (the Trainer wraps the model for data parallel)."""
    import copy

    from transformers import TrainerCallback
    from trl import SFTTrainer

    stage, st = plan.stage, plan.cfg.stage(plan.stage)
    # The eval before training runs inside train() (`eval_on_start`), after the Trainer has wrapped the model for data
    # parallel. An evaluate() called before train() marks the model as prepared, and accelerate then never wraps it in
    # DDP: each process would train alone, its gradients never averaged with the others'.
    eval_on_start = bool(plan.data.eval and st.eval_before_training and setup.checkpoint is None)
    args = copy.copy(plan.sft_config)
    args.eval_on_start = eval_on_start

    class ReportEvalBeforeTraining(TrainerCallback):
        def on_evaluate(self, args, train_state, control, metrics=None, **kwargs):
            if train_state.global_step == 0 and metrics and "eval_loss" in metrics and state.is_main_process:
                from tqdm.auto import tqdm

                # above the progress bars, which are on the screen by now
                tqdm.write(f"[{stage}] eval loss before training: {metrics['eval_loss']:.4f}", file=sys.stdout)

    trainer = SFTTrainer(
        model=setup.model,
        args=args,
        train_dataset=to_dataset(plan.training_rows("train")),
        eval_dataset=to_dataset(plan.training_rows("eval")) if plan.data.eval else None,
        processing_class=plan.tokenizer,
        callbacks=[ReportEvalBeforeTraining()],
    )
    watch = precision_watch(trainer, stage, plan.precision.name)
    trainer.add_callback(watch)
    install_compact_lm_head(trainer.model.get_base_model())  # no-op on GPUs, where TRL's Triton kernels run
    compiled_layers = compile_decoder_layers(trainer.model) if st.compile_layers else 0
    if compiled_layers:
        _say(state, stage, f"compile_layers: {compiled_layers} decoder layers compiled (the first steps include "
                           "compiling)")
    if setup.checkpoint is not None:
        _say(state, stage, f"resuming from {setup.checkpoint}")
    train_started = time.time()
    output = trainer.train(resume_from_checkpoint=setup.checkpoint)
    train_seconds = time.time() - train_started
    history = list(trainer.state.log_history)
    eval_first = eval_last = None
    if plan.data.eval:
        last = next((h for h in reversed(history) if "eval_loss" in h), None)
        if last is None or last.get("step") != trainer.state.global_step:  # no eval at the final step yet
            trainer.evaluate()
            history = list(trainer.state.log_history)
            last = history[-1]
        eval_last = last["eval_loss"]
        if eval_on_start or setup.checkpoint is not None:  # a resumed stage's log holds its first eval
            eval_first = next((h["eval_loss"] for h in history if "eval_loss" in h), None)
    return TrainedStage(trainer, output, history, train_seconds, eval_first, eval_last, compiled_layers, watch)


def stage_metrics(plan: StagePlan, setup: StageSetup, trained: TrainedStage, state, started: float) -> StageMetrics:
    """metrics.json: losses, throughput over every process, and the main process's peak memory."""
    import torch

    history, output = trained.history, trained.output
    train_losses = [h["loss"] for h in history if "loss" in h]
    tokens = next((h["num_tokens"] for h in reversed(history) if "num_tokens" in h), None)
    if tokens is None or setup.checkpoint is not None:
        tokens = int(sum(plan.data.train_lengths) * (output.metrics.get("epoch") or 1))
    first, last = (train_losses[0], train_losses[-1]) if train_losses else (None, None)
    eval_first, eval_last = trained.eval_first, trained.eval_last
    peak_rss, peak_gpu = _peak_memory()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    return StageMetrics(
        stage=plan.stage, train_loss_first=first, train_loss_last=last, train_loss_mean=output.training_loss,
        train_loss_reduction_pct=_loss_reduction(first, last),
        eval_loss_first=eval_first, eval_loss_last=eval_last,
        eval_loss_reduction_pct=_loss_reduction(eval_first, eval_last),
        eval_perplexity_last=round(float(torch.exp(torch.tensor(eval_last))), 4) if eval_last is not None else None,
        optimizer_steps=trained.trainer.state.global_step, epochs=output.metrics.get("epoch"),
        train_conversations=len(plan.data.train), eval_conversations=len(plan.data.eval), tokens_seen=int(tokens),
        train_seconds=round(trained.train_seconds, 2),
        tokens_per_second=round(tokens / trained.train_seconds, 2) if trained.train_seconds else None,
        samples_per_second=output.metrics.get("train_samples_per_second"),
        peak_rss_gb=peak_rss, peak_gpu_gb=peak_gpu, wall_seconds=round(time.time() - started, 2),
        resumed_from=Path(setup.checkpoint).name if setup.checkpoint else None,
        device=device + (f" x {state.num_processes} processes" if state.num_processes > 1 else ""),
        liger_kernel=bool(plan.sft_config.use_liger_kernel), compiled_layers=trained.compiled_layers,
        precision=plan.precision.name, skipped_steps=trained.watch.skipped, nonfinite_grad_norms=trained.watch.nonfinite,
        loss_scale_last=trained.watch.loss_scale(), planned_peak_gb=plan.planned_peak_gb,
    )


def stage_lineage(plan: StagePlan, setup: StageSetup) -> Lineage:
    """lineage.json: what the adapter just saved was made from."""
    from trainer.data.conversations import file_sha256

    cfg, data, q = plan.cfg, plan.data, plan.cfg.quantization
    return Lineage(
        run=cfg.name, stage=plan.stage, created=now_iso(), base_model=setup.base_record,
        quantization=QuantizationRecord(True, q.quant_type, q.double_quant, base_dtypes(q, plan.precision)[1])
        if q.load_in_4bit else QuantizationRecord(False),
        parent_adapter=_parent_record(setup.init_from, setup.parent_stage) if setup.init_from else None,
        adapter_sha256=file_sha256(plan.folder.adapter_weights),
        chat_template=TemplateRecord(plan.template.family, plan.template.sha256),
        datasets=tuple(DatasetRecord.from_report(r) for r in data.reports),
        split=SplitRecord.of(data, seed=cfg.seed, separate_eval_file=bool(cfg.stage(plan.stage).dataset.eval_path)),
        bad_rows=tuple(str(e) for r in data.reports for e in r.errors),
        grounding=plan.grounded["record"] if plan.grounded else None,
        seed=cfg.seed, libraries=library_versions(), git=git_state(REPO_ROOT), command=" ".join(sys.argv),
    )


def record_stage(plan: StagePlan, setup: StageSetup, trained: TrainedStage, state, started: float) -> None:
    """Save the adapter (every process: the Trainer gathers sharded weights first) with the exact template it was
    trained with; then, on the main process, the loss plot, split, lineage and metrics."""
    folder = plan.folder
    trained.trainer.save_model(str(folder.adapter))  # adapter + tokenizer; writes on the main process only
    if not state.is_main_process:
        return
    name_base_in_adapter(folder.adapter, plan.cfg)
    plot_losses(trained.history, folder.loss_plot, f"{plan.cfg.name} / {plan.stage}")  # the eval before: step 0
    metrics = stage_metrics(plan, setup, trained, state, started)
    folder.write_records(StageSplit.from_dict(plan.data.split_record()), stage_lineage(plan, setup), metrics)
    _say(state, plan.stage, f"done in {metrics.wall_seconds:.0f}s: train loss {metrics.train_loss_first} -> "
                            f"{metrics.train_loss_last}, eval loss {metrics.eval_loss_first} -> "
                            f"{metrics.eval_loss_last}, {metrics.tokens_per_second} tokens/s; adapter in "
                            f"{folder.adapter}")


def run_stage(cfg: PipelineConfig, stage: str, *, resume: bool = False, plan: StagePlan | None = None) -> Path:
    """Train one stage and write its run directory. Returns the stage directory. `plan` is the stage's plan from
    `plan_pipeline` (made here when not given). Under data parallel every process calls it, and every process
    returns only once the stage folder is finished."""
    started = time.time()
    folder = StageFolder(cfg.run_dir() / stage)
    if resume and folder.is_finished():
        if process_state().is_main_process:
            print(f"[{stage}] already complete in {folder.path}; skipping (--resume)", flush=True)
        return folder.path

    # Set up: config, tokenizer, template and data were all checked before any weights load
    if plan is None:
        plan = plan_pipeline(cfg, [stage]).stages[stage]
    state = process_state()
    setup = setup_stage(plan, state, resume=resume)

    # Train
    trained = train_stage(plan, setup, state)

    # Record: the adapter, then the records; no process leaves before the stage is finished
    record_stage(plan, setup, trained, state, started)
    state.wait_for_everyone()
    return folder.path


def run_pipeline(cfg: PipelineConfig, stage: str = "all", *, resume: bool = False) -> list[Path]:
    """Run one stage or all of them in order. Later stages continue earlier ones as configured. Under data parallel,
    every process runs it and the processes close their connections together at the end."""
    names = list(cfg.stages) if stage == "all" else [stage]
    for name in names:
        cfg.stage(name)  # unknown names fail before anything runs
    # Plan every stage that will run before any trains, so a typo in stage 2 does not surface after stage 1's
    # hours; each stage then trains on exactly what was checked.
    todo = [name for name in names if not (resume and StageFolder(cfg.run_dir() / name).is_finished())]
    plans = plan_pipeline(cfg, todo).stages if todo else {}
    stage_dirs = [run_stage(cfg, name, resume=resume, plan=plans.get(name)) for name in names]
    state = process_state()
    if state.num_processes > 1:  # data parallel: leave together, with no connection to a peer left open
        state.wait_for_everyone()
        state.destroy_process_group()
    return stage_dirs
