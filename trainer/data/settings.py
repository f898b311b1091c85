"""The settings of a stage's training data (`DatasetSettings`), with the schemas, kinds and topics it may name: the
data floor's own settings, which the pipeline config (`trainer.train.config`) and the audit read."""

from __future__ import annotations

from dataclasses import dataclass

SCHEMAS = ("messages", "sharegpt", "alpaca", "prompt_completion")
"""The conversation schemas `trainer.data.conversations` reads (`dataset.schema`, besides `auto`)."""
DATASET_KINDS = ("synthetic", "real", "audit")
TOPICS = ("admissions", "sop", "documents", "tests", "scholarships", "visas", "costs", "housing",
          "health insurance", "work rights", "culture", "careers", "language", "other")
"""Counselling topics: the labelling tab's tags, the rubric's topics (all but `other`) and the generator's plan."""


@dataclass(frozen=True)
class DatasetSettings:
    path: str
    """Local JSONL/JSON/Parquet/CSV file, a folder of them, or a Hub dataset id."""
    schema: str = "auto"
    """`auto`, `messages`, `sharegpt`, `alpaca` or `prompt_completion`."""
    split: str = "train"
    """Split to read when `path` is a Hub dataset."""
    revision: str | None = None
    """Hub dataset revision; None means the default branch."""
    eval_fraction: float = 0.1
    """Share of conversations held out for evaluation, chosen by content hash (stable across runs and machines)."""
    eval_path: str | None = None
    """Separate evaluation file; when set, `eval_fraction` is ignored."""
    system_prompt: str | None = None
    """System turn added to conversations that have none (the counsellor persona)."""
    max_bad_fraction: float = 0.1
    """The stage fails when more than this share of rows is invalid."""
    strict: bool = False
    """Fail on the first invalid row instead of skipping and counting it."""
    kind: str = "synthetic"
    """What the conversations are, for the dataset card: `synthetic` (LLM-generated), `real` or `audit`."""
    license: str = "other"
    """Licence of the data (an SPDX-style id as the Hub uses, e.g. mit, cc-by-4.0), for the dataset card."""
    source_datasets: tuple[str, ...] = ()
    """Hub datasets this data was derived from, for the cards."""
    grounding: str = "none"
    """`kb`: train with the knowledge-base passages retrieved for each conversation in its system prompt (as the app
    serves grounded answers), so the adapter learns to use them; the data files are not changed. `none`: as written."""
    kb: str = "data/kb"
    """Knowledge base for `grounding: kb` (relative paths: the working directory, then the tool's folder)."""
    grounding_k: int = 5
    """Passages per conversation with `grounding: kb`: more context, longer rows (rows over max_length are rejected)."""
