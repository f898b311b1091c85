"""Two-stage QLoRA fine-tuning of an open LLM into a study-abroad counsellor (arXiv 2504.15610, done honestly)."""

from pathlib import Path

__version__ = "0.1.0"

REPO_ROOT = Path(__file__).resolve().parent.parent
"""The folder the tool ships in: the shipped KB, configs, card templates and scripts are found from here."""
