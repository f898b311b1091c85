"""Chat templates: the one module that decides how a conversation is rendered, in training and in serving.

Training uses a twin of the model's own chat template with `{% generation %}` markers (so TRL can put the loss
on assistant tokens only). Before any run, `verify_training_template` renders the same conversations with both
templates and refuses to train if a single character differs: training and serving always see the same format.
The adapter folder stores the training template as its chat template, so whatever loads the adapter renders
exactly what was trained.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from trainer.train.model import ModelError

TEMPLATE_FAMILIES = ("mistral", "chatml")
_TEMPLATE_FILES = {"mistral": "mistral_instruct.jinja", "chatml": "chatml.jinja"}
_DEFAULT_SYSTEM_LINE = "{%- set default_system_message = none -%}"


@dataclass(frozen=True)
class TrainingTemplate:
    """The chat template training (and serving) renders with."""

    text: str
    family: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def _template_file(family: str) -> str:
    return (Path(__file__).parent / "chat_templates" / _TEMPLATE_FILES[family]).read_text(encoding="utf-8")


def detect_template_family(chat_template: str | None) -> str | None:
    """Which shipped training template matches a model's own template, by its markers."""
    if not chat_template:
        return None
    if "[INST]" in chat_template:
        return "mistral"
    if "<|im_start|>" in chat_template:
        return "chatml"
    return None


def _own_template(tokenizer) -> str | None:
    template = tokenizer.chat_template
    if isinstance(template, dict):
        template = template.get("default")
    return template


def _chatml_default_system(tokenizer) -> str | None:
    """The system prompt a ChatML template inserts when a conversation has none (SmolLM2 does), or None."""
    probe = "\u2063probe\u2063"
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": probe}], tokenize=False)
    head, sep, _ = rendered.partition(f"<|im_start|>user\n{probe}")
    if sep and head.startswith("<|im_start|>system\n") and head.endswith("<|im_end|>\n"):
        return head[len("<|im_start|>system\n"): -len("<|im_end|>\n")]
    return None


def select_training_template(tokenizer, setting: str = "auto") -> TrainingTemplate:
    """Pick the training template for a tokenizer: `auto`, a shipped family, or a .jinja path."""
    from trl.chat_template_utils import has_generation_markers

    own = _own_template(tokenizer)
    if setting not in ("auto", *TEMPLATE_FAMILIES):
        path = Path(setting)
        if not path.is_file():
            raise ModelError(f"model.chat_template: {setting!r} is neither auto, {', '.join(TEMPLATE_FAMILIES)} "
                             "nor a .jinja file")
        text = path.read_text(encoding="utf-8")
        if not has_generation_markers(text):
            raise ModelError(f"{path}: the template has no {{% generation %}} markers, so the loss cannot be limited "
                             "to the assistant's answers")
        return TrainingTemplate(text=text, family=f"file:{path.name}")
    family = setting if setting != "auto" else detect_template_family(own)
    if family is None:
        if own and has_generation_markers(own):
            return TrainingTemplate(text=own, family="model")
        raise ModelError(
            "the base model's chat template is not one this tool ships a training twin for (Mistral [INST] or "
            "ChatML); set model.chat_template to a .jinja file that renders the same text with "
            "{% generation %} markers around each assistant answer"
        )
    text = _template_file(family)
    if family == "chatml" and own:
        default_system = _chatml_default_system(tokenizer)
        if default_system is not None:
            text = text.replace(_DEFAULT_SYSTEM_LINE,
                                "{%- set default_system_message = " + json.dumps(default_system) + " -%}", 1)
    return TrainingTemplate(text=text, family=family)


PROBE_CONVERSATIONS: tuple[tuple[dict[str, str], ...], ...] = (
    ({"role": "user", "content": "Which documents do I need for a UK Student visa?"},
     {"role": "assistant", "content": "## Documents\n\n- CAS number\n- Passport\n- Proof of funds"}),
    ({"role": "system", "content": "You are a careful study-abroad counsellor."},
     {"role": "user", "content": "Can I work while studying in Germany?"},
     {"role": "assistant", "content": "  Yes, within limits: 140 full days or 280 half days a year.  "},
     {"role": "user", "content": "And in Canada?"},
     {"role": "assistant", "content": "Check IRCC's current off-campus work rules before you plan on it."}),
)


def _renders(tokenizer, template: str | None, messages: Sequence[dict[str, str]], gen_prompt: bool) -> str:
    return tokenizer.apply_chat_template(list(messages), chat_template=template, tokenize=False,
                                         add_generation_prompt=gen_prompt)


def verify_training_template(tokenizer, template: TrainingTemplate,
                             conversations: Sequence[Sequence[dict[str, str]]] = ()) -> int:
    """Render every conversation (and its prompt up to each answer) with the model's own template and the
    training template; raise ModelError at the first difference. Returns the number of renderings compared."""
    own = _own_template(tokenizer)
    checked = 0
    if own is not None and own != template.text:
        for messages in (*PROBE_CONVERSATIONS, *conversations):
            variants = [(list(messages), False)]
            for i, m in enumerate(messages):
                if m["role"] == "assistant":
                    variants.append((list(messages[:i]), True))
            for msgs, gen_prompt in variants:
                expected = _renders(tokenizer, None, msgs, gen_prompt)
                got = _renders(tokenizer, template.text, msgs, gen_prompt)
                checked += 1
                if expected != got:
                    at = next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b),
                              min(len(expected), len(got)))
                    raise ModelError(
                        f"the {template.family} training template renders differently from the model's own template "
                        f"at character {at}: model {expected[max(0, at - 40):at + 40]!r} vs training "
                        f"{got[max(0, at - 40):at + 40]!r}; set model.chat_template to a matching template"
                    )
    probe = tokenizer.apply_chat_template(list(PROBE_CONVERSATIONS[0]), chat_template=template.text, tokenize=True,
                                          return_dict=True, return_assistant_tokens_mask=True)
    if not any(probe["assistant_masks"]):
        raise ModelError(f"the {template.family} training template marks no assistant tokens; check its "
                         "{% generation %} markers")
    return checked
