"""The report: the evaluation's results (`trainer.eval.results.EvalResults`) as markdown, and the metric and loss
charts (the verdict goes into each stage's lineage through `trainer.train.rundir.StageRun.record_evaluation`)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from trainer.inference.model import BASE
from trainer.eval.results import Engine, EvalResults, ModelResult
from trainer.eval.rubric import MARKDOWN_RULE, PASS_THRESHOLD

# Report

def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _with_ci(value: Any, ci: Sequence[float] | None, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    return _fmt(value, digits) + (f" [{_fmt(ci[0], digits)}, {_fmt(ci[1], digits)}]" if ci else "")


TABLE_COLUMNS = (
    ("eval_loss", "eval loss", 3), ("eval_perplexity", "perplexity", 2), ("rouge_l", "ROUGE-L", 3),
    ("bleu", "BLEU", 2), ("markdown_rate", "markdown rate", 2), ("rubric_accuracy", "rubric accuracy", 2),
    ("false_premise_correction", "false-premise correction", 2), ("kb_contradiction_rate", "KB contradictions", 2),
    ("judge_win_rate", "judge win rate", 2),
)
PAIRED_ROWS = (("rubric_accuracy", "rubric accuracy"), ("false_premise_correction", "false-premise correction"),
               ("judge", "judge (wins − losses)"), ("markdown_rate", "markdown rate"),
               ("kb_contradiction_rate", "KB contradictions (lower is better)"),
               ("rubric_mean_score", "rubric mean score"), ("rouge_l", "ROUGE-L"), ("bleu", "BLEU"),
               ("eval_loss", "eval loss (lower is better)"))


def _paired_cell(c: dict[str, Any] | None) -> str:
    if not c or c.get("difference") is None:
        return "n/a"
    low, high = c["interval"]
    text = f"{c['difference']:+.3f} [{low:+.3f}, {high:+.3f}] (n={c['n']}"
    if "p_value" in c:
        text += f", {c['adapter_only']} better / {c['base_only']} worse, p={c['p_value']:.2g}"
    return text + ")"


def _paired_table(title: str, results: EvalResults, clean: bool, note: str) -> list[str]:
    adapters = [(stage, paired) for stage, entry in results.adapters.items() if (paired := entry.comparison(clean))]
    if not adapters:
        return []
    lines = [title, "", note, "", "| metric | " + " | ".join(f"{s} − base" for s, _ in adapters) + " |",
             "|---|" + "---|" * len(adapters)]
    for metric, label in PAIRED_ROWS:
        if any(metric in paired for _, paired in adapters):
            lines.append(f"| {label} | " + " | ".join(_paired_cell(paired.get(metric)) for _, paired in adapters)
                         + " |")
    return lines + [""]


def _metrics_table(models: list[tuple[str, ModelResult]], columns, ns, clean: bool = False) -> list[str]:
    header = ["model"] + [f"{label} ({ns[key]})" if ns.get(key) else label for key, label, _ in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, entry in models:
        m, ci = entry.measured(clean)
        cells = [name] + [_with_ci(m.get(key), ci.get(key), digits) if key != "judge_win_rate" or name != BASE
                          else "—" for key, _, digits in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_report(results: EvalResults) -> str:
    """The evaluation's results as a markdown report, with the paper-style table first."""
    models = results.models
    n = results.n
    with_reference = n.reference_prompts + n.prompts_with_reference
    ns = {"eval_loss": f"n={n.eval_conversations} conv.", "eval_perplexity": "",
          "kb_contradiction_rate": f"n={n.answers_per_model}",
          "rouge_l": f"n={with_reference}", "bleu": f"n={with_reference}",
          "markdown_rate": f"n={n.answers_per_model}", "rubric_accuracy": f"n={n.questions}",
          "false_premise_correction": f"n={n.false_premise_questions}",
          "judge_win_rate": f"n={n.judged_questions}"}
    engine = results.engine or Engine("local")
    columns = [c for c in TABLE_COLUMNS if (c[0] != "judge_win_rate" or results.judge)
               and any(c[0] in entry.metrics for _, entry in models)]
    lines = _header_section(results, engine)
    lines += _paired_table("## Adapter − base, question by question", results, False,
                           "Each adapter against its base on the same items: rates with the paired-proportion "
                           "interval and the exact McNemar (sign) test; means, BLEU and loss with the paired "
                           "bootstrap. `n` is the number of items both answered.")
    lines += _metrics_section(results, models, columns, ns)
    lines += _contamination_section(results, models, columns, ns)
    lines += _grounded_section(results)
    if n.held_out_asked:
        lines += _held_out_section(results, models)
    else:
        lines += ["## Held-out conversations", "", "Not asked: this evaluation is about the prompts above alone "
                  "(`--held-out` adds one prompt per assistant turn of every stage's held-out conversations, and "
                  "the held-out loss).", ""]
    lines += _loss_reduction_section(results)
    lines += _judge_section(results)
    lines += _throughput_section(models, engine)
    lines += _rubric_section(results, models)
    lines += _settings_section(results, models, engine)
    return "\n".join(lines)


def _header_section(results: EvalResults, engine: Engine) -> list[str]:
    """The title, what was evaluated where, the verdicts and the gate rule."""
    q = results.quantization
    if q is None:
        where = "not loaded here"
    else:
        where = (f"4-bit {q.quant_type or ''}" if q.load_in_4bit else "unquantized") \
            + (", for the held-out loss" if not engine.local else "") + f" · {results.device}"
    lines = [f"# Evaluation of run `{results.run}`", "",
             f"{results.created} · base `{results.base_model}` ({where})"
             + (f" · answers from `{engine.base_url}` (engine {engine.name}, "
                f"{engine.concurrency} requests at once; models "
                + ", ".join(f"{k} `{v}`" for k, v in engine.models.items()) + ")"
                if not engine.local else ""), "",
             "## Verdict", ""]
    for stage, gate in results.gate.items():
        lines.append(f"- **{stage}: {gate.verdict.upper()}** — {gate.summary}")
    return lines + ["", f"Gate rule: {results.settings.gate.rule}", ""]


def _metrics_section(results: EvalResults, models, columns, ns) -> list[str]:
    """Base vs adapters: every metric with its interval, and what each metric means."""
    n = results.n
    shown = {key for key, _, _ in columns}
    notes = [("eval_loss", "- eval loss: assistant-token cross-entropy over every stage's held-out conversations, "
              "pooled by token; perplexity = exp(eval loss)."),
             ("rouge_l", "- ROUGE-L: F1, rouge-score with stemming; BLEU: corpus SacreBLEU (13a tokenizer); both "
              "against the reference answers (" + " and ".join(
                  ["the prompt file's"] * bool(n.prompts_with_reference)
                  + ["one prompt per assistant turn of the held-out conversations"] * bool(n.reference_prompts))
              + ")."),
             ("markdown_rate", f"- markdown rate: {MARKDOWN_RULE}."),
             ("rubric_accuracy", f"- rubric accuracy: share of questions scoring >= {PASS_THRESHOLD} (score = share "
              "of `must_mention` points matched, the correction counting as one point on false-premise questions; "
              "0 when a `must_not_claim` error fires and its `unless` cue is absent)."),
             ("false_premise_correction", "- false-premise correction: share of false-premise questions whose "
              "answer has a correction cue and no listed error."),
             ("kb_contradiction_rate", "- KB contradictions: share of answers the live KB check flags (the audit's "
              "rules: a false claim a rule knows, a programme the university does not offer, a scholarship the "
              "student cannot get, a discontinued scheme).")]
    if not columns:
        return []
    settings = results.settings
    lines = ["## Base vs adapters", "",
             "Point estimates with 95% percentile-bootstrap intervals "
             f"({settings.bootstrap.resamples} resamples, seed {settings.seed}); "
             "n is the number of items resampled.", ""]
    lines += _metrics_table(models, columns, ns)
    return lines + ["", *[note for key, note in notes if key in shown],
                    "- judge win rate: share of questions the adapter won against the base (both orders combined)."
                    if results.judge else "- judge: none configured (`--judge-base-url`).", ""]


def _loss_reduction_section(results: EvalResults) -> list[str]:
    """Each stage's training and eval loss, first to last, and why a falling loss is not the verdict."""
    lines = ["## Loss reduction per stage", "",
              "| stage | train loss first → last | train reduction | eval loss first → last | eval reduction | "
              "steps | source |", "|---|---|---|---|---|---|---|"]
    for stage, entry in results.adapters.items():
        r = entry.loss_reduction
        lines.append(f"| {stage} | {_fmt(r.train_loss_first)} → {_fmt(r.train_loss_last)} | "
                     f"{_fmt(r.train_loss_reduction_pct, 1)}% | {_fmt(r.eval_loss_first)} → "
                     f"{_fmt(r.eval_loss_last)} | {_fmt(r.eval_loss_reduction_pct, 1)}% | "
                     f"{r.optimizer_steps} | {r.source} |")
    lines += ["", "A falling training loss shows that an adapter fits its training data; it says nothing about the "
              "quality of its answers (the paper's 52.7% reduction came with an adapter that lost to its base).",
              "", "![metrics](metrics.png)", "", "![loss curves](loss_curves.png)", ""]
    return lines


def _judge_section(results: EvalResults) -> list[str]:
    """The pairwise judge's verdicts per adapter, and when it is trusted."""
    if not results.judge:
        return []
    j = results.judge
    lines = ["## Pairwise judge", "", f"Endpoint `{j.settings['base_url']}`, model "
              f"`{j.settings['model'] or 'default'}`, temperature 0, each pair judged twice with the answers "
              "swapped; agreeing verdicts stand, a tie and a preference give the preference, opposite "
              "preferences give a tie.", "",
              "| adapter | n | wins | ties | losses | unparseable | win rate | loss rate | net (win − loss) | "
              "agreement of both orders |", "|---|---|---|---|---|---|---|---|---|---|"]
    for stage, s in j.per_adapter.items():
        lines.append(f"| {stage} | {s.n} | {s.wins} | {s.ties} | {s.losses} | {s.invalid} | "
                     f"{_with_ci(s.win_rate, s.win_rate_ci, 2)} | "
                     f"{_with_ci(s.loss_rate, s.loss_rate_ci, 2)} | "
                     f"{_with_ci(s.net, s.net_ci, 2)} | {_fmt(s.agreement, 2)}"
                     + ("" if s.reliable else " (unreliable)") + " |")
    lines += ["", "A judge whose two orders agree on fewer than two thirds of the items disagrees with itself "
              "too often to be trusted: it is reported as unreliable and the gate does not use it.", ""]
    return lines


def _throughput_section(models, engine: Engine) -> list[str]:
    """Answers, new tokens and speed per model, and who wrote them."""
    lines = ["## Throughput", "", f"Answers written by {_engine_words(engine)}.", "",
              "| model | answers | new tokens | seconds | answers/s | tokens/s |", "|---|---|---|---|---|---|"]
    for name, entry in models:
        t = entry.throughput
        lines.append(f"| {name} | {t.samples} | {t.new_tokens} | {t.seconds} | {t.samples_per_second} | "
                     f"{t.tokens_per_second} |")
    return lines


def _rubric_section(results: EvalResults, models) -> list[str]:
    """Every rubric question's score per model."""
    if not results.rubric_by_question:
        return []
    lines = ["", "## Rubric by question", "", "Score per question (✓ passes at >= 0.5; ✗ a listed false claim "
              "fired).", "", "| question | topic | false premise | " + " | ".join(name for name, _ in models)
              + " |", "|---|---|---|" + "---|" * len(models)]
    for row in results.rubric_by_question:
        cells = []
        for name, _ in models:
            s = row.scores[name]
            cells.append(f"{s.score:.2f} {'✓' if s.passed else ''}{'✗' if s.claims else ''}".strip())
        lines.append(f"| {row.id} | {row.topic} | {'yes' if row.false_premise else ''} | "
                     + " | ".join(cells) + " |")
    return lines


def _settings_section(results: EvalResults, models, engine: Engine) -> list[str]:
    """What the evaluation ran with: decoding, seed, questions, KB, system prompt, templates, time."""
    n = results.n
    s = results.settings
    templates = ", ".join(f"{name} `{entry.chat_template_sha256}`" for name, entry in models
                          if entry.chat_template_sha256)
    return ["", "## Settings", "",
              f"- generation: {json.dumps(s.generation)}",
              f"- seed: {s.seed}; bootstrap: {s.bootstrap.resamples} resamples, percentile, "
              f"{int(s.bootstrap.confidence * 100)}%",
              f"- questions: `{s.questions_file}` (sha256 `{s.questions_sha256}`), "
              + (f"{n.questions} rubric questions used" if s.questions_kind == "rubric" else
                 f"{n.prompts} prompts used ({n.prompts_with_reference} with a reference answer; no rubric "
                 f"score), {len(s.skipped_prompt_rows)} rows skipped")
              + (f" (--limit {s.limit})" if s.limit else ""),
              *[f"  - skipped {row}" for row in s.skipped_prompt_rows[:20]],
              f"- knowledge base: `{s.kb.path}`, version {s.kb.version.get('version')}",
              f"- rubric system prompt (sha256 `{s.system_prompt_sha256}`): {s.system_prompt}",
              "- chat templates (sha256): " + templates if engine.local else
              "- chat templates: the server's for the answers" + (f"; here, for the held-out loss (sha256): "
                                                                  f"{templates}" if templates else ""),
              f"- load: {results.load_seconds} s; total: {results.wall_seconds} s", ""]


def _engine_words(engine: Engine) -> str:
    if engine.local:
        return (f"the base and its adapters loaded here "
                f"({engine.device if engine.device is not None else 'this machine'}, "
                f"{engine.batch_size if engine.batch_size is not None else '?'} prompts per batch)")
    return (f"the server at `{engine.base_url}` (engine {engine.name}, {engine.concurrency} requests in "
            "flight; seconds are the wall time of each model's whole pass, so tokens/s is the aggregate)")


def _held_out_section(results: EvalResults, models) -> list[str]:
    lines = ["## Held-out loss per split", "", "| model | " + " | ".join(
        f"{s} split (n={d.conversations}, {d.tokens} tok.)" for s, d in results.splits.items()) + " |",
        "|---|" + "---|" * len(results.splits)]
    for name, entry in models:
        cells = [name]
        for split in results.splits:
            d = entry.eval_loss_by_split.get(split)
            cells.append(f"{_fmt(d.loss)} (ppl {_fmt(d.perplexity, 2)})" if d else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    recorded = [f"{s}: {_fmt(entry.loss_reduction.eval_loss_last)}" for s, entry in results.adapters.items()]
    lines += ["", "Recorded at the end of training (own split, TRL): " + ", ".join(recorded) + "."]
    lines += [f"\n**{s} split not measured**: {d.unavailable}" for s, d in results.splits.items()
              if d.unavailable]
    return lines + [""]


def plot_metrics(results: EvalResults, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = results.models
    colors = ["#7f7f7f", "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]
    rates = [("rouge_l", "ROUGE-L", 1), ("bleu", "BLEU/100", 100), ("markdown_rate", "markdown", 1),
             ("rubric_accuracy", "rubric acc.", 1), ("false_premise_correction", "false-premise corr.", 1),
             ("judge_win_rate", "judge win", 1)]
    rates = [r for r in rates if any(r[0] in entry.metrics for _, entry in models)]
    if any(entry.metrics.get("eval_loss") is not None for _, entry in models):
        fig, (ax_loss, ax_rates) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1, 3.2]})
        for k, (name, entry) in enumerate(models):
            value = entry.metrics.get("eval_loss")
            ci = entry.intervals.get("eval_loss")
            if value is not None:
                err = [[value - ci[0]], [ci[1] - value]] if ci else None
                ax_loss.bar(k, value, color=colors[k % len(colors)], yerr=err, capsize=3, label=name)
        ax_loss.set_xticks(range(len(models)), [name for name, _ in models])
        ax_loss.set_title("held-out loss (lower is better)")
    else:  # no held-out conversations asked: no empty loss panel
        fig, ax_rates = plt.subplots(1, 1, figsize=(9.3, 4.2))
    width = 0.8 / len(models)
    for k, (name, entry) in enumerate(models):
        xs, ys, errs = [], [[], []], []
        for j, (key, _, scale) in enumerate(rates):
            value = entry.metrics.get(key)
            if value is None:
                continue
            ci = entry.intervals.get(key)
            xs.append(j + (k - (len(models) - 1) / 2) * width)
            errs.append(value / scale)
            ys[0].append(value / scale - ci[0] / scale if ci else 0)
            ys[1].append(ci[1] / scale - value / scale if ci else 0)
        if xs:
            ax_rates.bar(xs, errs, width=width, color=colors[k % len(colors)], yerr=ys, capsize=2, label=name)
    ax_rates.set_xticks(range(len(rates)), [label for _, label, _ in rates])
    ax_rates.set_ylim(0, 1.05)
    ax_rates.set_title("answer metrics with 95% bootstrap intervals (higher is better)")
    ax_rates.legend(loc="upper right")
    ax_rates.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{results.run}: base vs adapters")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_loss_curves(results: EvalResults, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = list(results.adapters.items())
    fig, axes = plt.subplots(1, len(stages), figsize=(5.2 * len(stages), 3.8), squeeze=False)
    for ax, (stage, entry) in zip(axes[0], stages):
        r = entry.loss_reduction
        if r.train_curve:
            ax.plot(*zip(*r.train_curve), ".-", label="train loss", color="#1f77b4")
        if r.eval_curve:
            ax.plot(*zip(*r.eval_curve), "o-", label="eval loss", color="#d62728")
        ax.set_title(f"{stage}: train {_fmt(r.train_loss_reduction_pct, 1)}%, eval "
                     f"{_fmt(r.eval_loss_reduction_pct, 1)}%")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss (assistant tokens)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _contamination_section(results: EvalResults, models, columns, ns) -> list[str]:
    c = results.contamination
    if c is None:
        return ["## Contamination", "", "Not checked (`--no-contamination`).", ""]
    lines = ["## Contamination", "",
             f"Every question and held-out conversation compared with the {c.training_rows} training rows of "
             f"every stage (re-read through the run's lineage): exact after normalising case and spaces, or near "
             f"(estimated Jaccard of byte 8-grams >= {c.threshold})."]
    for stage, problem in c.unchecked_stages.items():
        lines.append(f"**{stage} not checked**: {problem}")
    if not c.matches:
        return lines + ["", "No contaminated item.", ""]
    lines += ["", "| item | kind | how | similarity | training row | stage |", "|---|---|---|---|---|---|"]
    for m in c.matches:
        lines.append(f"| {m['item'][:40]} | {m['kind']} | {m['how']} | {m['similarity']:.2f} | {m['location']} | "
                     f"{m['stage']} |")
    lines += ["", f"### Metrics without the {results.n.contaminated_items} contaminated answer items", ""]
    lines += _metrics_table(models, columns, {}, clean=True)
    lines += [""] + _paired_table("### Adapter − base without them", results, True,
                                  "The gate decides on these.")
    return lines


def _grounded_section(results: EvalResults) -> list[str]:
    g = results.grounded
    if g is None:
        return []
    recall = g.recall
    lines = ["## Grounded in the knowledge base", "",
             f"Every model also answered each question with the KB passages retrieved for it in its system prompt "
             f"({g.settings['method']}, k={g.settings['k']}, KB {g.kb_version.get('version')}; index built "
             f"in {g.index_seconds} s). Retrieval recall@{recall.k} on the {recall.n} rubric questions "
             f"that name KB entries: {_fmt(recall.recall, 3)}.", "",
             "| model | rubric accuracy: without → with | grounded − without | false-premise correction: without → "
             "with | grounded − without | KB contradictions: without → with | grounded − without |",
             "|---|---|---|---|---|---|---|"]
    plain = dict(results.models)
    verdicts = []
    for name, entry in g.models.items():
        cells = [name]
        for metric in ("rubric_accuracy", "false_premise_correction", "kb_contradiction_rate"):
            cells.append(f"{_fmt(plain[name].metrics.get(metric), 2)} → {_fmt(entry.metrics.get(metric), 2)}")
            cells.append(_paired_cell(entry.vs_ungrounded.get(metric)))
        lines.append("| " + " | ".join(cells) + " |")
        c = entry.vs_ungrounded.get("rubric_accuracy")
        if c and c.get("interval"):
            low, high = c["interval"]
            verdicts.append(f"{name}: grounding " + ("helped" if low > 0 else "hurt" if high < 0 else
                                                     "made no clear difference")
                            + f" on rubric accuracy ({_paired_cell(c)})")
    return lines + ["", *[f"- {v}" for v in verdicts], ""]
