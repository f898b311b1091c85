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
- **Live KB check**: the share of answers the audit's KB rules flag (`Auditor.check_answer`, as the app runs it).
- **Blind pairwise judge** (optional): any OpenAI-compatible endpoint compares base and adapter answers in both
  orders; win/tie/loss with 95% percentile-bootstrap intervals, and the share of items where both orders agree (a
  judge that disagrees with itself on more than a third is reported as unreliable and does not gate).
- **Paired comparisons**: the adapter and its base answer the same items, so every metric is also reported as the
  difference adapter - base with a paired interval (and the exact McNemar / sign test for rates).
- **Gate**: paired non-inferiority with a margin (`trainer.eval.gate`): passed, failed or inconclusive at n = N,
  with the number of questions that would decide it.
- **Contamination** (by default): every question and held-out conversation against every stage's training rows,
  exactly or nearly; the report lists them and gives every metric without them (the gate decides on those).
- **Outside prompt sets** (`--questions my_prompts.csv`): judge, references, markdown and the KB check, no rubric.
- **Grounded** (`--grounded`): every model also answers with the KB passages retrieved for each question, compared
  with its own ungrounded answers, with retrieval recall@k on the rubric's questions.

The base loads once (4-bit when the run trained in 4-bit); every adapter loads into the same model
(`trainer.inference.model.AdapterModel`) and is activated in turn. Output: `runs/<name>/eval/` with `report.md`,
`results.json` (read by `trainer.hub.push` for the gate and the model card), `answers.jsonl`, `metrics.png` and
`loss_curves.png`; the verdict is also written into each stage's `lineage.json` under `evaluation`.

Modules: `rubric` (questions and their scoring), `prompts` (outside prompt sets), `items` (what every model answers,
contamination, per-item measures), `metrics` (rates and paired comparisons from the measures), `stats` (bootstrap
and paired intervals, McNemar, ROUGE, BLEU), `judge` (the blind pairwise judge), `gate` (the verdict), `results`
(results.json as types: what the phases produce and the report reads), `report` (report.md and charts, rendered
from those types), `engine` (answers from an OpenAI-compatible server), `job` (the settings), `run` (the phases).
"""

from __future__ import annotations

from trainer import UserError


class EvalError(UserError, RuntimeError):
    """An evaluation problem a user can fix; the message names the file, question or run and the rule."""
