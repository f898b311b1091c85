"""Two-stage QLoRA fine-tuning of an open LLM into a study-abroad counsellor (arXiv 2504.15610, done honestly)."""

from pathlib import Path

__version__ = "0.1.0"

REPO_ROOT = Path(__file__).resolve().parent.parent
"""The folder the tool ships in: the shipped KB, configs, card templates and scripts are found from here."""


class UserError(Exception):
    """A mistake a user can fix (a file, a setting, a row, a server that is down): its message names the file, the
    row and the rule in one line. Every such error of the tool derives from it, and the command line prints it
    without a traceback."""
