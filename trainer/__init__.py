"""Two-stage QLoRA fine-tuning of an open LLM into a study-abroad counsellor (arXiv 2504.15610, done honestly)."""

__version__ = "0.1.0"
