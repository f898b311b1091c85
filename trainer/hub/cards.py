"""Every model, dataset and Space card, rendered in one place from `data_cards/*.md` with huggingface_hub's card
classes: an adapter's model card and its dataset card (`push`), the generator's synthetic dataset card (`generate`),
the feedback export's card (`export-feedback`) and the Space's README (`push`).

The cards quote the run folder (`trainer.train.rundir.StageRun`: its typed metrics and lineage): what was trained, on
which rows, with which result. They take the stage and plain values (repo ids, commits); `push` decides those and
imports this module, never the reverse.
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any, Sequence

from trainer import REPO_ROOT
from trainer.train.rundir import base_hub_id, verdict_of

if TYPE_CHECKING:
    from trainer.train.rundir import StageRun

TEMPLATES = REPO_ROOT / "data_cards"
SPACE_README = REPO_ROOT / "space_config" / "README.md"
_SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                    (10_000_000, "1M<n<10M"))


def size_category(n: int) -> str:
    """The Hub's `size_categories` value for n rows."""
    for limit, name in _SIZE_CATEGORIES:
        if n < limit:
            return name
    return "10M<n<100M"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return "" if value is None else str(value)


def verdict_text(gate: dict[str, Any] | None, forced: bool) -> str:
    if gate is None:
        return ("**Not evaluated.** This adapter has not been compared with its base model (rubric, false-premise "
                "questions, blind judge). Run `python -m trainer eval --run runs/<name>` before relying on it.")

    verdict = verdict_of(gate)
    if verdict == "passed":
        return f"**Passed** the comparison with its base model: {gate.get('summary', '')}"
    if verdict == "not gated":
        return (f"**Not gated**: {gate.get('summary', '')}. The last evaluation measured nothing the gate decides on; "
                "treat this adapter as unproven.")
    if verdict == "inconclusive":
        return (f"**Inconclusive** comparison with its base model: {gate.get('summary', '')}. The evaluation could "
                "not tell whether this adapter is better or worse than its base at this number of questions; "
                "treat it as unproven.")
    return (f"**Failed** the comparison with its base model: {gate.get('summary', '')}. "
            + ("It was published anyway (`--force`); prefer the base model." if forced else ""))


# Serving on an engine (model card and Space bundle)

def serving_section(base_model: str, adapters: Sequence[tuple[str, str]], lora_rank: int,
                    revision: str | None = None) -> str:
    """Markdown: the vLLM and TGI commands serving the pushed adapters ((name, repo) pairs) on the base, and the
    Space settings that point the app at the server."""
    from trainer.hub.serving import hub_commands

    commands, served = hub_commands(base_model, adapters, lora_rank, revision)
    entries = "".join(f"  - name: {a.name}\n    served_name: {a.name}   # TGI: {a.tgi_name}\n" for a in served)
    return (
        "## Serving on an engine\n\n"
        "Many visitors at once are an inference engine's job. Both commands below serve the adapters on the base "
        "behind an OpenAI-compatible API on port 8000; each adapter is chosen by the request's `model` field, and "
        "the server renders the base's own chat template, which training verified identical to the adapter's.\n\n"
        "The engines serve the adapter on the full-precision base, not the 4-bit NF4 one it was trained on. On the "
        "demo model that lowered the held-out loss by about 0.2 nats and changed the wording of every greedy answer, "
        "with no loss of rubric score on the questions measured (`bench/nf4_serving.py`; the tool's BENCHMARKS.md, "
        "\"Serving an NF4-trained adapter on a full-precision base\"); measure your own run with that script before "
        "you rely on it.\n\n"
        f"vLLM (adapters named {', '.join(f'`{a.name}`' for a in served)}):\n\n"
        f"```bash\n{commands['vllm']}\n```\n\n"
        f"TGI (adapters named {', '.join(f'`{a.tgi_name}`' for a in served)}):\n\n"
        f"```bash\n{commands['tgi']}\n```\n\n"
        "Then point the Space at it in `space_config/space.yaml` (the key stays in the variable `api_key_env` "
        "names):\n\n"
        f"```yaml\nengine: openai\nopenai:\n  base_url: http://127.0.0.1:8000/v1\n  base_served_name: {base_model}\n"
        f"  api_key_env: null\nlimits:\n  concurrency: 16\nadapters:\n{entries}```\n")


def _sha_list(hashes) -> str:
    return ", ".join(f"`{h[:16]}...`" for h in hashes)


def _metric_rows(stage: StageRun) -> list[tuple[str, str]]:
    """The model card's training metrics table: (name, value) for every one recorded."""
    m = stage.metrics
    rows = [("train_loss_first", m.train_loss_first), ("train_loss_last", m.train_loss_last),
            ("train_loss_reduction_pct", m.train_loss_reduction_pct), ("eval_loss_first", m.eval_loss_first),
            ("eval_loss_last", m.eval_loss_last), ("eval_loss_reduction_pct", m.eval_loss_reduction_pct),
            ("eval_perplexity_last", m.eval_perplexity_last), ("optimizer_steps", m.optimizer_steps),
            ("train_conversations", m.train_conversations), ("eval_conversations", m.eval_conversations),
            ("tokens_seen", m.tokens_seen), ("tokens_per_second", m.tokens_per_second),
            ("peak_rss_gb", m.peak_rss_gb), ("peak_gpu_gb", m.peak_gpu_gb), ("wall_seconds", m.wall_seconds),
            ("device", m.device), ("precision", m.precision), ("skipped_steps", m.skipped_steps),
            ("nonfinite_grad_norms", m.nonfinite_grad_norms), ("liger_kernel", m.liger_kernel)]
    return [(name, _fmt(value)) for name, value in rows if value is not None]


def _training_rows(stage: StageRun) -> list[tuple[str, Any]]:
    """The model card's training configuration table, from the config as trained."""
    st, q, lora = stage.cfg.stages[stage.name], stage.cfg.quantization, stage.cfg.lora
    return [
        ("quantization", f"4-bit {q.quant_type}, double quant {q.double_quant}, compute "
                         f"{stage.lineage.quantization.compute_dtype or q.compute_dtype}" if q.load_in_4bit else "none"),
        ("precision", f"{stage.cfg.precision}" + (f" (ran as {stage.metrics.precision})"
                                                  if stage.metrics.precision else "")),
        ("LoRA", f"r={lora.r}, alpha={lora.alpha}, dropout={lora.dropout}, bias={lora.bias}, "
                 f"targets {', '.join(lora.target_modules)}"),
        ("max length", stage.cfg.max_length), ("learning rate", st.learning_rate),
        ("epochs" if st.max_steps == -1 else "max steps", st.num_train_epochs if st.max_steps == -1 else st.max_steps),
        ("batch", f"{st.per_device_train_batch_size} x {st.gradient_accumulation_steps} accumulation"),
        ("optimizer", st.optim), ("schedule", f"{st.lr_scheduler_type}, warmup ratio {st.warmup_ratio}"),
        ("max grad norm", st.max_grad_norm), ("loss", "assistant tokens only"),
        ("padding-free", st.padding_free), ("gradient checkpointing", st.gradient_checkpointing),
        ("seed", stage.cfg.seed),
    ]


# An adapter and its data (push)

def model_card(stage: StageRun, repo_id: str, *, gate: dict | None = None, forced: bool = False,
               dataset_repo: str | None = None, parent_repo: str | None = None, parent_commit: str | None = None,
               revision: str | None = None):
    """The adapter's model card: use snippet, verdict, lineage, training settings and metrics. `dataset_repo` is
    where the stage's rows were published, `parent_repo` / `parent_commit` where the adapter it continued was,
    `revision` the branch everything is pushed to."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    base_id, base_note = base_hub_id(stage)
    st = stage.cfg.stages[stage.name]
    m, lin = stage.metrics, stage.lineage
    run = stage.cfg.name
    dataset_ids = ([dataset_repo] if dataset_repo else []) + list(st.dataset.source_datasets)
    eval_results = []
    dataset_type = dataset_repo or (st.dataset.source_datasets[0] if st.dataset.source_datasets else st.dataset.path)
    for metric, value in (("loss", m.eval_loss_last), ("perplexity", m.eval_perplexity_last),
                          *sorted(stage.eval_metrics().items())):
        if value is not None:
            eval_results.append(EvalResult(task_type="text-generation", dataset_type=dataset_type,
                                           dataset_name=f"{run} {stage.name} held-out split",
                                           dataset_split="test", metric_type=metric, metric_value=round(value, 4),
                                           metric_name=f"eval {metric}" if metric in ("loss", "perplexity")
                                           else metric))
    card_data = ModelCardData(
        base_model=base_id, library_name="peft", pipeline_tag="text-generation", license="apache-2.0",
        language=["en"], datasets=dataset_ids or None, model_name=repo_id,
        tags=["lora", "qlora", "peft", "trl", "sft", "education", "study-abroad", "counselling",
              f"base_model:adapter:{base_id}"],
        eval_results=eval_results or None,
    )
    parent = lin.parent_adapter
    if parent:
        parent_text = (f"[{parent_repo}](https://huggingface.co/{parent_repo}) @ "
                       f"`{parent_commit or 'commit known once pushed'}`, " if parent_repo else f"`{parent.path}`, ") \
            + f"adapter sha256 `{parent.adapter_sha256}` (continued with `is_trainable=True`, never merged)"
    else:
        parent_text = "none (a fresh LoRA adapter)"
    data_summary = "; ".join(
        f"`{d.source}` ({d.schema}, {d.kept} kept of {d.rows_read}, {d.bad} bad, {d.duplicates_removed} duplicates; "
        f"file sha256 {_sha_list(d.file_sha256.values())})" for d in lin.datasets)
    base_detail = ""
    if lin.base_model.weights_sha256:
        base_detail = f" (weights sha256 {_sha_list(lin.base_model.weights_sha256.values())})"
    elif lin.base_model.commit:
        base_detail = f" @ `{lin.base_model.commit}`"
    kind = st.dataset.kind
    synthetic_caution = (
        "This adapter was trained on LLM-generated conversations that were not fact-checked: it learns their format "
        "and also their errors." if kind == "synthetic" else
        "Its earlier stage (if any) was trained on LLM-generated conversations; errors learned there can persist.")
    split = lin.split
    return ModelCard.from_template(
        card_data, template_path=str(TEMPLATES / "model_card.md"),
        repo_id=repo_id, base_model=base_id, base_note=base_note, base_detail=base_detail, run=run,
        stage=stage.name, stage_role={"synthetic": "trained on synthetic counselling dialogues",
                                      "real": "trained on real counselling dialogues",
                                      "audit": "trained on audited dialogues"}[kind]
        + (f", continuing {parent.stage or 'an earlier adapter'}" if parent else ""),
        verdict=verdict_text(gate, forced),
        revision_arg=f', revision="{revision}"' if revision else "",
        parent=parent_text, adapter_sha256=lin.adapter_sha256,
        template_family=lin.chat_template.family, template_sha256=lin.chat_template.sha256,
        data_summary=data_summary,
        split_summary=f"{split.method} (seed {split.seed}): {split.train_rows} train / {split.eval_rows} eval "
                      "conversations",
        code=f"commit `{lin.git.commit}`" + (" (with uncommitted changes)" if lin.git.dirty else ""),
        libraries=", ".join(f"{k} {v}" for k, v in lin.libraries.items() if v),
        training_rows=_training_rows(stage), metric_rows=_metric_rows(stage), loss_plot="loss.png",
        synthetic_caution=synthetic_caution,
        serving=serving_section(base_id, [(stage.name, repo_id)], stage.cfg.lora.r, revision),
    )


def dataset_card(stage: StageRun, repo_id: str, rows: dict[str, list[dict]], *, model_repo: str | None = None):
    """The card of a stage's exported rows (`rows["train"]`, `rows["test"]`): provenance, validation, split.
    `model_repo` is where the adapter trained on them was published."""
    from huggingface_hub import DatasetCard, DatasetCardData

    st = stage.cfg.stages[stage.name]
    spec = st.dataset
    n = sum(len(v) for v in rows.values())
    creators = {"synthetic": ["machine-generated"], "real": ["crowdsourced", "expert-generated"],
                "audit": ["expert-generated"]}[spec.kind]
    card_data = DatasetCardData(
        license=spec.license, task_categories=["text-generation"], language=["en"],
        size_categories=[size_category(n)], annotations_creators=list(creators),
        language_creators=list(creators), source_datasets=list(spec.source_datasets) or ["original"],
        pretty_name=f"{stage.cfg.name} {stage.name} counselling dialogues",
        configs=[{"config_name": "default", "data_files": [
            {"split": "train", "path": "data/train.jsonl"}, {"split": "test", "path": "data/test.jsonl"}]}],
        tags=["study-abroad", "counselling", "education", "conversational", spec.kind],
    )
    stats = []
    for split_name, items in (("train", rows["train"]), ("test", rows["test"])):
        turns = [len(r["messages"]) for r in items] or [0]
        answers = [len(m["content"]) for r in items for m in r["messages"] if m["role"] == "assistant"] or [0]
        stats.append({"split": split_name, "n": len(items),
                      "turns": f"{min(turns)} / {statistics.mean(turns):.1f} / {max(turns)}",
                      "answer_chars": f"{statistics.mean(answers):.0f}"})
    # A stage with a separate eval file read two datasets: count the rejections and duplicates of both.
    reports = stage.lineage.datasets
    bad_total = sum(r.bad for r in reports)
    bad: dict[str, int] = {}
    for r in reports:
        for rule, count in r.bad_by_rule.items():
            bad[rule] = bad.get(rule, 0) + count
    bad_summary = (f"{bad_total} rows rejected (" + ", ".join(f"{k}: {v}" for k, v in bad.items()) + ")"
                   if bad_total else "no rows were rejected")
    limitations = []
    if spec.kind == "synthetic":
        limitations.append("Generated by a language model and **not fact-checked**: answers can state wrong visa "
                           "rules, fees, deadlines or programmes with confidence. Do not use it as a source of facts.")
    if spec.source_datasets:
        limitations.append("Derived from " + ", ".join(spec.source_datasets) + ".")
    limitations.append("English only; written for students from a limited set of countries and degree levels.")
    limitations.append(f"Small: {n} conversations, enough to shape style, not to teach facts.")
    split = stage.lineage.split
    source = ", ".join(spec.source_datasets) or f"`{spec.path}`" + (
        f" (test rows: `{spec.eval_path}`)" if spec.eval_path else "")
    return DatasetCard.from_template(
        card_data, template_path=str(TEMPLATES / "dataset_card.md"), repo_id=repo_id, run=stage.cfg.name,
        stage=stage.name, kind_text={"synthetic": "Synthetic (LLM-generated)", "real": "Real",
                                     "audit": "Audited"}[spec.kind],
        source=source, max_length=stage.cfg.max_length,
        bad_summary=bad_summary, duplicates=sum(r.duplicates_removed for r in reports),
        split_method=split.method, seed=split.seed, train_sha256=split.train_sha256,
        eval_sha256=split.eval_sha256, model_repo=model_repo or "(not pushed)",
        stats=stats, limitations=limitations,
    )


# The Space (push)

def space_card(base_model: str, model_repos: Sequence[str], dataset_repos: Sequence[str], serving: str = "",
               hardware=None):
    """The Space's README: the shipped `space_config/README.md` with its `models` and `datasets` metadata pointing
    at the base and the pushed repos (shipped entries kept after them), and `serving` (markdown) appended. With
    `hardware` (`trainer.hub.space_hardware.SpaceHardware`), its `suggested_hardware` and a "Hardware" section."""
    from huggingface_hub import SpaceCard

    card = SpaceCard.load(SPACE_README)
    if hardware is not None:
        card.data.suggested_hardware = hardware.flavor
        card.text = card.text.rstrip("\n") + f"\n\n## Hardware\n\n{hardware.runs_on}\n"
    if serving:
        card.text = card.text.rstrip("\n") + "\n\n" + serving
    card.data.models = list(dict.fromkeys([base_model, *model_repos]))
    card.data.datasets = list(dict.fromkeys([*dataset_repos, *(card.data.datasets or [])]))
    return card


# Generated and collected data (generate, export-feedback)

def synthetic_card(summary: dict[str, Any], settings: dict[str, Any]):
    """The card of `python -m trainer generate`'s output: counts, audit flags and the generation settings."""
    from huggingface_hub import DatasetCard, DatasetCardData

    counts = summary["counts"]
    card_data = DatasetCardData(
        license="apache-2.0", task_categories=["text-generation"], language=["en"],
        size_categories=[size_category(sum(counts.values()))],
        annotations_creators=["machine-generated"], language_creators=["machine-generated"],
        source_datasets=["original"], pretty_name="Grounded synthetic study-abroad counselling dialogues",
        configs=[{"config_name": "default", "data_files": [{"split": s, "path": f"{s}.jsonl"}
                                                           for s in ("train", "eval", "audit")]}],
        tags=["synthetic", "study-abroad", "counselling", "grounded", "audited"],
    )
    return DatasetCard.from_template(card_data, template_path=str(TEMPLATES / "synthetic_card.md"), summary=summary,
                                     counts=counts, flags=summary["audit"]["conversations_per_flag"],
                                     settings=settings)


def feedback_card(manifest: dict[str, Any]):
    """The card of `python -m trainer export-feedback`'s output: collection, consent, redaction and counts."""
    import datetime as dt

    from huggingface_hub import DatasetCard, DatasetCardData

    card_data = DatasetCardData(
        license="other", task_categories=["text-generation"], language=["en"],
        size_categories=[size_category(manifest["counts"]["records"])],
        annotations_creators=["crowdsourced", "expert-generated"], language_creators=["crowdsourced"],
        source_datasets=["original"], pretty_name="Study-abroad counsellor: labelled real dialogues",
        configs=[{"config_name": name, "data_files": [{"split": "train", "path": f"{name}.jsonl"}]}
                 for name in ("sft", "kto", "dpo")],
        tags=["study-abroad", "counselling", "feedback", "human-feedback", "real"],
    )
    when = lambda t: dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d") if t else "-"  # noqa: E731
    return DatasetCard.from_template(
        card_data, template_path=str(TEMPLATES / "feedback_card.md"), counts=manifest["counts"],
        redactions=manifest["redactions"], adapters=manifest["adapters"], base_models=manifest["base_models"],
        reviewers=manifest["reviewers"], first=when(manifest["first"]), last=when(manifest["last"]),
    )
