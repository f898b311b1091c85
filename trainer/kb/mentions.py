"""Entity linking for the premise check: every KB entity a question names, with where it names it.

`Question(kb, text)` splits a visitor's message into sentences once and finds, lazily and per entity type, each
mention: the entity, the words that name it and their span. The types a relation (`trainer.kb.relations`) may link
are the keys of `ENTITY_TYPES`:

- `country`: a country by name, alias or demonym ("Germany", "the UK", "German");
- `place`: a destination the question places the student in: a country named, or the country of a university
  named (TU Munich stands for Germany where the country itself goes unnamed);
- `nationality`: the student's citizenship, from first-person and third-person cues anywhere in the message ("as
  a Kenyan citizen", "I'm from Nepal", "my cousin from Ghana", "Pakistani applicants", "I hold a Brazilian
  passport"), one per message;
- `university`, `scholarship`, `test`, `group`, `system` (application systems), `document` (a term only one
  destination uses: I-20, CAS, CoE), and `level` and `field`, whose words the KB declares in relations.yaml.

A name inside a longer name of another entity is not a mention of its own: "Cambridge" in "Gates Cambridge
Scholarship", "New Zealand" in "Manaaki New Zealand Scholarships", "Commonwealth" in "Commonwealth Scholarships".
Names are found by word tokens first (`KnowledgeBase.find_*`, no regex over every name), then located by a regex over
the few names present.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from trainer.kb.names import name_variants

SENTENCE_BREAK = re.compile(r"(?<=[.!?])(?<!\b[A-Z]\.)(?<!e\.g\.)(?<!i\.e\.)(?<!\bvs\.)(?<!etc\.)\s+|\n+")
"""Sentence ends, but not after an initial or abbreviation ("J.N. Tata", "U.S. Student Program", "e.g.")."""


@dataclass(frozen=True)
class Named:
    """A thing the KB names that is not an entity of its own: a level (bachelor, master, phd), a field, or a
    document term and the country that uses it."""

    id: str
    name: str
    aliases: tuple[str, ...] = ()
    country: str | None = None


@dataclass(frozen=True)
class Mention:
    type: str
    entity: Any
    start: int
    end: int
    text: str

    @property
    def key(self) -> str:
        """The id relations compare: a country's code, anything else's id."""
        return getattr(self.entity, "code", None) or self.entity.id


@dataclass(frozen=True)
class Sentence:
    start: int
    end: int
    text: str


def names_of(entity: Any) -> tuple[str, ...]:
    """An entity's name and aliases (and a country's demonyms), each also in its other number ("Scholarship" /
    "Scholarships")."""
    names = (entity.name, *getattr(entity, "aliases", ()), *getattr(entity, "demonyms", ()))
    return tuple(v for n in names if n for v in name_variants(n))


def spans(text: str, names: Sequence[str]) -> list[tuple[int, int]]:
    """Where any of `names` occurs in `text` as whole words (acronyms as written, other names in any case)."""
    return [m.span() for m in _name_pattern(tuple(names)).finditer(text)]


@functools.lru_cache(maxsize=8192)
def _name_pattern(names: tuple[str, ...]) -> re.Pattern:
    """One regex for an entity's names, longest first; acronyms only as written."""
    parts = []
    for name in sorted(set(names), key=len, reverse=True):
        body = re.escape(name).replace(r"\ ", r"[\s\-]+").replace("'", "['’]")
        parts.append(f"(?i:{body})" if any(ch.islower() for ch in name) else body)
    return re.compile(rf"(?<![\w-])(?:{'|'.join(parts) or '(?!)'})(?!\w|-\d)")


def sentences(text: str) -> list[Sentence]:
    """The sentences of `text` with their offsets."""
    out, at = [], 0
    for part in SENTENCE_BREAK.split(text):
        if part is None:
            continue
        start = text.find(part, at)
        at = start + len(part)
        if part.strip():
            out.append(Sentence(start, at, part))
    return out


def _named(kb, type_: str) -> Callable[[str], list[Any]]:
    """The `find_*` lookup of an entity type: which of its entities a text names (by word tokens)."""
    return {"country": kb.find_countries, "university": kb.find_universities, "scholarship": kb.find_scholarships,
            "test": kb.find_tests, "group": kb.find_groups, "system": kb.find_systems}[type_]


_CONTAINERS = ("scholarship", "group", "system", "university")
"""Types whose long names hold other names ("Gates Cambridge Scholarship", "Commonwealth Scholarships")."""

ENTITY_TYPES = ("country", "place", "nationality", "university", "scholarship", "test", "group", "system",
                "document", "level", "field")


class Question:
    """One visitor message: its sentences and, per entity type, its mentions (computed on first use)."""

    def __init__(self, kb, text: str):
        self.kb, self.text = kb, text
        self.sentences = sentences(text)
        self._mentions: dict[str, list[Mention]] = {}
        self._raw: dict[str, list[Mention]] = {}

    def mentions(self, type_: str, within: Sentence | None = None) -> list[Mention]:
        """This type's mentions, in order, those inside a longer mention of another type left out; only those in
        `within` when given."""
        if type_ not in self._mentions:
            self._mentions[type_] = [m for m in self._found(type_) if not self._inside_other(m)]
        out = self._mentions[type_]
        if within is not None:
            out = [m for m in out if within.start <= m.start and m.end <= within.end]
        return out

    def sentence_of(self, mention: Mention) -> Sentence | None:
        return next((s for s in self.sentences if s.start <= mention.start < s.end), None)

    # Finding

    def _found(self, type_: str) -> list[Mention]:
        if type_ not in self._raw:
            self._raw[type_] = self._find(type_)
        return self._raw[type_]

    def _find(self, type_: str) -> list[Mention]:
        if type_ == "place":
            return self._places()
        if type_ == "nationality":
            home = self.kb.home_country_span(self._masked_awards())
            return [Mention("nationality", home[0], home[1], home[2], self.text[home[1]:home[2]])] if home else []
        if type_ == "document":
            return self._by_names("document", [Named(term, term, (), c.code) for c in self.kb.find_marked(self.text)
                                               for term in c.markers])
        if type_ in ("level", "field"):
            return self._by_names(type_, self.kb.find_named(type_, self.text))
        return self._by_names(type_, _named(self.kb, type_)(self.text))

    def _by_names(self, type_: str, entities: Sequence[Any]) -> list[Mention]:
        out = []
        for entity in entities:
            for a, b in spans(self.text, names_of(entity)):
                out.append(Mention(type_, entity, a, b, self.text[a:b]))
        return sorted(out, key=lambda m: (m.start, -m.end))

    def _places(self) -> list[Mention]:
        home = self.mentions("nationality")  # where the student is from is not where they go
        countries = [Mention("place", m.entity, m.start, m.end, m.text) for m in self.mentions("country")
                     if not any(h.start < m.end and m.start < h.end for h in home)]
        for m in self.mentions("university"):  # "at TU Delft" places the student in the Netherlands
            countries.append(Mention("place", self.kb.country(m.entity.country), m.start, m.end, m.text))
        return sorted(countries, key=lambda m: m.start)

    def _inside_other(self, mention: Mention) -> bool:
        """Whether a longer mention of another type (a scholarship's name, a group's) holds this one."""
        for other in _CONTAINERS:
            if other == mention.type or (mention.type in ("place", "level", "field") and other == "university"):
                continue  # a university's name does not hide its country, nor the field it names ("Medical School")
            for m in self._found(other):
                if m.start <= mention.start and mention.end <= m.end and m.end - m.start > mention.end - mention.start:
                    return True
        return False

    def _masked_awards(self) -> str:
        """The text with award names blanked out, so "Manaaki New Zealand" is not read as where the student is
        from."""
        text = self.text
        for m in self._found("scholarship"):
            text = text[:m.start] + " " * (m.end - m.start) + text[m.end:]
        return text
