"""`python -m trainer eval`: every adapter of a run against its base model, measured as the paper's revision (v4) did.

The paper's first version reported a falling training loss, "92% domain accuracy" and "95% markdown formatting"
without a protocol; measured properly, its adapter was worse than the base. This module measures every run the
honest way, by default:

- **Held-out loss**: assistant-token cross-entropy and perplexity of the base and each adapter on every stage's
  eval split (exactly the rows `split.json` recorded as held out), rendered with the stage's training template.
- **Loss reduction** per stage, first vs last logged loss (train and eval), from `metrics.json` and the Trainer's
  log history, reported as what it is: evidence of fitting, not of quality.
- **Answers** to the eval splits' prompts and to a domain rubric (`data/eval/questions.yaml`), generated greedily
  (fixed seed, batched with left padding) by the base and each adapter, each with the chat template saved with it.
- **Reference metrics** against the eval splits' answers: ROUGE-L F1 (`rouge-score`) and corpus BLEU (`sacrebleu`).
- **Markdown rate**: share of answers with a heading, or with at least two list items (`is_markdown`).
- **Rubric**: per question, the share of `must_mention` points an answer satisfies, zeroed when a `must_not_claim`
  error fires; it passes at >= 0.5. False-premise questions count their `correction` as one more point, and the
  false-premise correction rate is the share of them whose answer corrects the premise without a listed error.
- **Blind pairwise judge** (optional): any OpenAI-compatible endpoint compares base and adapter answers in both
  orders; win/tie/loss with 95% percentile-bootstrap intervals.
- **Gate**: an adapter passes when its rubric accuracy and false-premise correction rate are at least the base's
  and, where a judge ran, the judge's interval does not favour the base (`gate_decision`).

The base loads once (4-bit when the run trained in 4-bit); every adapter loads into the same PeftModel and is
switched with `set_adapter` (the base: `disable_adapter()`). Output: `runs/<name>/eval/` with `report.md`,
`results.json` (read by `trainer.push` for the gate and the model card), `answers.jsonl`, `metrics.png` and
`loss_curves.png`; the verdict is also written into each stage's `lineage.json` under `evaluation`.

Modules: `rubric` (questions and their scoring), `stats` (bootstrap intervals, ROUGE, BLEU), `judge` (the blind
pairwise judge), `gate` (the verdict), `report` (report.md and charts), `run` (the whole evaluation).
"""

from __future__ import annotations

BASE = "base"
"""The name the base model (every adapter disabled) goes by in results, reports and answers."""


class EvalError(RuntimeError):
    """An evaluation problem a user can fix; the message names the file, question or run and the rule."""
