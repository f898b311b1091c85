"""The knowledge base at serving time: retrieval that grounds an answer (and becomes its numbered sources) and the
live check of every finished answer against the KB, and the corrections a question's false premise calls for. All
are the trainer's own code: `trainer.retrieve` (the same retrieval the eval and the generator use),
`trainer.kb.audit.Auditor.check_answer` (the same rules as `trainer audit`) and `trainer.kb.premise`. Built once at
start-up; a broken KB stops the app there with one line naming file, entry and rule."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from trainer.inference.model import BASE
from trainer.hub.space_settings import GroundingSettings


@dataclass
class Grounding:
    settings: GroundingSettings
    retriever: Any
    auditor: Any
    defaults: dict[str, bool] = field(default_factory=dict)
    """Per adapter, whether its answers are grounded by default (the base and unlisted adapters: `enabled`)."""

    @classmethod
    def load(cls, settings: GroundingSettings, registry=()) -> "Grounding":
        """Load the KB (KBError when it is missing or broken), index it and set each adapter's default."""
        from trainer.kb.audit import Auditor
        from trainer.kb.loader import load_kb, resolve_kb_folder
        from trainer.kb.retrieve import RetrievalSettings, Retriever

        kb = load_kb(resolve_kb_folder(settings.kb))
        defaults = {a.name: a.ground for a in registry if getattr(a, "ground", None) is not None}
        return cls(settings, Retriever(kb, RetrievalSettings(k=settings.k)), Auditor(kb), defaults)

    @property
    def kb_version(self) -> str:
        return str(self.retriever.kb.version.get("version", ""))

    def default_for(self, adapter: str) -> bool:
        return self.defaults.get(adapter, self.settings.enabled) if adapter != BASE else self.settings.enabled

    def search(self, question: str) -> list[Any]:
        return self.retriever.search(question)

    def premise(self, messages: Sequence[dict[str, str]]) -> list[Any]:
        """The false premises of the last question in `messages` that the KB corrects (`trainer.kb.premise.Correction`),
        found before and whatever the model answers; empty when `check_premises` is off."""
        if not self.settings.check_premises:
            return []
        asked = [m for m in messages if m.get("role") == "user" and isinstance(m.get("content"), str)]
        return self.auditor.premise_corrections(asked[-1:])

    def check(self, conversation: Sequence[dict[str, str]]) -> list[Any]:
        """The KB rules on the last answer of `conversation` (user and assistant turns); empty when switched off.
        With `check_premises` off, an answer is not required to correct the question's premise either."""
        if not self.settings.check_answers:
            return []
        flags = self.auditor.check_answer([m for m in conversation if m.get("role") in ("user", "assistant")])
        if not self.settings.check_premises:
            from trainer.kb.premise import AFFIRMED, IGNORED

            flags = [f for f in flags if f.rule not in (AFFIRMED, IGNORED)]
        return flags

    def flags_per_answer(self, messages: Sequence[dict[str, str]]) -> list[dict[str, Any]]:
        """Every answer of a stored dialogue checked with the conversation up to it: what a feedback record keeps,
        so reviewers can filter for contradicted answers."""
        out = []
        for i, m in enumerate(messages):
            if m.get("role") == "assistant":
                for flag in self.check(messages[:i + 1]):
                    out.append({"message": i, "rule": flag.rule, "detail": flag.detail, "source": flag.source})
        return out
