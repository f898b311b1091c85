"""Finding names in text without a regex scan: lowercase word tokens of a text, computed once and cached for the last
few texts (`text_tokens`), and a name index looked up by first token, then confirmed as a phrase (`NameIndex`);
also where the student comes from (`HomeCues`)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from trainer.kb.schema import Country

_WORD_BYTES = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789")
_SEPARATORS = bytes(c if (c in _WORD_BYTES or c >= 128) else 32 for c in range(256))
"""Byte map: ASCII letters and digits, and every byte of a non-ASCII character, stay; the rest become spaces."""
_UNICODE_PUNCTUATION = ("\u2019", "\u2018", "\u201c", "\u201d", "\u2013", "\u2014", "\u2010", "\u2026",
                        "\u2022", "\u00a0", "\u00ab", "\u00bb")


@dataclass(frozen=True)
class TextTokens:
    words: frozenset[bytes]
    joined: bytes
    """b" word word ... " with every separator run collapsed to one space, for phrase checks."""


TOKEN_CACHE: dict[str, TextTokens] = {}
_TOKEN_CACHE_SIZE = 64


def text_tokens(text: str) -> TextTokens:
    """Lowercase word tokens of `text`. Recent texts are cached: the audit asks about one conversation's messages
    and their concatenation several times each (a str caches its hash, so a hit costs a dict lookup)."""
    hit = TOKEN_CACHE.get(text)
    if hit is not None:
        return hit
    low = text.lower()
    if not low.isascii():
        for ch in _UNICODE_PUNCTUATION:  # curly quotes, dashes and the like separate words too
            if ch in low:
                low = low.replace(ch, " ")
    words = low.encode("utf-8").translate(_SEPARATORS).split()
    return remember_tokens(text, TextTokens(frozenset(words), b" " + b" ".join(words) + b" "))


def remember_tokens(text: str, tokens: TextTokens) -> TextTokens:
    if len(TOKEN_CACHE) >= _TOKEN_CACHE_SIZE:
        try:
            del TOKEN_CACHE[next(iter(TOKEN_CACHE))]  # oldest first (dicts keep insertion order)
        except (KeyError, StopIteration, RuntimeError):  # another thread got there first
            pass
    TOKEN_CACHE[text] = tokens
    return tokens


_PLURALS = {"scholarship": "scholarships", "fellowship": "fellowships", "award": "awards", "grant": "grants"}
_PLURALS.update({v: k for k, v in list(_PLURALS.items())})


def name_variants(name: str) -> tuple[str, ...]:
    """A name and its other number ("Commonwealth Master's Scholarships" / "... Scholarship"): visitors write
    either."""
    head, _, last = name.rpartition(" ")
    other = _PLURALS.get(last.lower())
    if not head or other is None:
        return (name,)
    return name, f"{head} {other[0].upper() + other[1:] if last[0].isupper() else other}"


def name_tokens(name: str) -> tuple[bytes, ...]:
    """The lowercase word tokens a name (or a sentence) is matched by."""
    return tuple(text_tokens(name).joined.split())


class NameIndex:
    """Every name of one entity type, indexed by its first lowercase token and mapped back to its entity."""

    def __init__(self, names: Iterable[tuple[str, Any]], alternation: bool = False):
        self.exact: dict[str, Any] = {}
        self.folded: dict[str, Any] = {}
        self.index: dict[bytes, list[tuple[bytes, tuple[bytes, ...], str | None, Any]]] = {}
        for name, entity in names:
            key = normalise_name(name)
            sensitive = case_sensitive(name)
            if sensitive:
                self.exact[key] = entity
            else:
                self.folded[key.lower()] = entity
            tokens = name_tokens(name)
            if tokens:
                phrase = b" " + b" ".join(tokens) + b" "
                self.index.setdefault(tokens[0], []).append((phrase, tokens[1:], name if sensitive else None,
                                                             entity))
        self.first_tokens = frozenset(self.index)
        self.alternation = ""
        if alternation:  # only the home-country cues need a regex
            parts = []
            if self.folded:
                parts.append(f"(?i:{_trie_pattern(self.folded)})")
            if self.exact:
                parts.append(_trie_pattern(self.exact))
            self.alternation = "(?:" + "|".join(parts) + ")" if parts else "(?!)"

    def entity(self, matched: str) -> Any:
        key = normalise_name(matched)
        return self.exact.get(key) or self.folded.get(key.lower())

    def find(self, text: str) -> list[Any]:
        """Entities named in `text`, ordered by (approximately) their first mention. A name only found inside a
        longer one ("Ireland" in "Northern Ireland", "Wales" in "New South Wales") does not count."""
        tokens = text_tokens(text)
        hits: list[tuple[bytes, float, Any]] = []
        for first in self.first_tokens & tokens.words:
            for phrase, rest, exact, entity in self.index[first]:
                if not all(t in tokens.words for t in rest):
                    continue
                at = tokens.joined.find(phrase)
                if at < 0:
                    continue
                where = at / len(tokens.joined)
                if exact is not None:  # acronyms and the like: confirm the exact spelling in the original text
                    at = _find_exact(text, exact)
                    if at < 0:
                        continue
                    where = at / max(1, len(text))
                hits.append((phrase, where, entity))
        found: dict[int, tuple[float, Any]] = {}
        for phrase, where, entity in hits:
            if entity is None:
                continue
            inside = sum(tokens.joined.count(longer) * longer.count(phrase) for longer, _, other in hits
                         if len(longer) > len(phrase) and phrase in longer and other is not entity)
            if inside and tokens.joined.count(phrase) <= inside:
                continue
            if id(entity) not in found or where < found[id(entity)][0]:
                found[id(entity)] = (where, entity)
        return [entity for _, entity in sorted(found.values(), key=lambda x: x[0])]


def _find_exact(text: str, name: str) -> int:
    """Index of the first whole-word, case-sensitive occurrence of `name` in `text`, or -1."""
    at = text.find(name)
    while at >= 0:
        before = text[at - 1] if at > 0 else " "
        after = text[at + len(name)] if at + len(name) < len(text) else " "
        if not (before.isalnum() or before == "_") and not (after.isalnum() or after == "_"):
            return at
        at = text.find(name, at + 1)
    return -1


def normalise_name(name: str) -> str:
    """A name with its whitespace and dashes collapsed to one space and curly apostrophes straightened."""
    return re.sub(r"[\s\-‐–]+", " ", name.replace("’", "'")).strip()


def case_sensitive(name: str) -> bool:
    """Acronyms (no lowercase letters) and names starting with a lowercase word match only as written."""
    letters = [ch for ch in name if ch.isalpha()]
    return bool(letters) and (not any(ch.islower() for ch in letters) or name[0].islower())


def _token(ch: str) -> str:
    if ch == " ":
        return r"[\s\-‐–]+"
    if ch == "'":
        return "['’]"
    return re.escape(ch)


def _trie_pattern(words: Iterable[str]) -> str:
    """A regex matching any of `words`, factored by common prefix so matching stays fast with many names."""
    trie: dict[str, Any] = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = True

    def render(node: dict[str, Any]) -> str:
        branches = [_token(ch) + render(child) for ch, child in sorted(node.items()) if ch != ""]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        if "" in node:  # a word ends here: the longer continuation is optional (greedy, so longest wins)
            return f"(?:{body})?"
        return body

    return render(trie)


class HomeCues:
    """Regexes for where the student comes from, strongest cue first."""

    def __init__(self, countries: Sequence[Country]):
        self.names = NameIndex(((n, c) for c in countries for n in (c.name, *c.aliases)), alternation=True)
        self.demonyms = NameIndex(((d, c) for c in countries for d in c.demonyms), alternation=True)
        name = rf"(?<![\w])(?P<name>{self.names.alternation})(?![\w])"
        demonym = rf"(?<![\w])(?P<demonym>{self.demonyms.alternation})(?![\w])"
        first_person = r"(?:\bi\s+am|\bi'm|\bi’m|\bim|\bwe\s+are|\bwe're)"
        # On ASCII text a name can only match where its first word is a word of the text (names with a character
        # that case-insensitively matches an ASCII letter, such as the Kelvin sign, would break that: no gate then).
        names = [n for c in countries for n in (c.name, *c.aliases, *c.demonyms)]
        self.ascii_gate = None if any(ch in n for n in names for ch in "\u212a\u017f\u0131\u0130") else \
            self.names.first_tokens | self.demonyms.first_tokens
        self.cues = [re.compile(p) for p in (
            # "I'm from Nigeria", "I come from the UK", "citizen of India", "my home country is Nepal"
            (rf"(?i:(?:{first_person}\s+(?:originally\s+|also\s+)?|\bi\s+come\s+|\bi\s+originally\s+come\s+)"
             rf"from\s+(?:the\s+)?){name}"),
            rf"(?i:\b(?:citizen|national|resident)\s+of\s+(?:the\s+)?){name}",
            rf"(?i:\bmy\s+(?:home\s+)?(?:country|nationality)\s*(?:is|:|,)?\s*(?:the\s+)?){name}",
            # "I am Indian", "I'm a Nigerian student", "as a Brazilian"
            rf"(?i:(?:{first_person}|\bas)\s+(?:an?\s+)?){demonym}(?!(?i:\s+(?:universit|college|school|visa)))",
            rf"(?i:\b(?:i\s+live|i\s+am\s+based|i'm\s+based|i\s+am\s+living|i'm\s+living)\s+in\s+(?:the\s+)?){name}",
            # someone the student asks for: "my cousin from Nepal", "my cousin in Berlin is German"
            (rf"(?i:\bmy\s+(?:\w+\s+)?(?:cousin|brother|sister|friend|son|daughter|niece|nephew|client|partner|"
             rf"wife|husband|child|kid|parents?|family)(?:\s+(?:is\s+|are\s+)?from\s+(?:the\s+)?{name}|"
             rf"(?:\s+(?!is\b|are\b)\S+){{0,3}}?\s+(?:is|are)\s+(?:an?\s+)?{demonym}))"),
            (rf"(?i:\b(?:hold|have|carry|holding|with)\s+(?:only\s+)?(?:an?\s+|my\s+)?)(?:{name}|{demonym})"
             rf"(?i:\s+passport)"),
            rf"(?i:\bfrom\s+(?:the\s+)?){name}(?i:\s+here\b)",
            rf"{demonym}(?i:\s+(?:here|myself)\b)",
            # weaker: "students from Ghana", "Indian citizen", "Kenyan passport"
            rf"(?i:\b(?:student|applicant|graduate|citizen|national|candidate)s?\s+from\s+(?:the\s+)?){name}",
            rf"{demonym}(?i:\s+(?:citizen|national|passport(?:\s+holder)?|nationality)s?\b)",
            rf"{demonym}(?i:\s+(?:student|applicant|graduate|people|nationals?|citizens?)s?\b)(?!(?i:\s+visa))",
        )]

    def find(self, text: str) -> Country | None:
        found = self.find_span(text)
        return found[0] if found else None

    def find_span(self, text: str) -> tuple[Country, int, int] | None:
        """The student's home country and where the text names it (the name or demonym), strongest cue first."""
        if text.isascii() and self.ascii_gate is not None and self.ascii_gate.isdisjoint(text_tokens(text).words):
            return None  # every cue names a country, and no country's first word is in the text
        for cue in self.cues:
            match = cue.search(text)
            if match:
                group = "name" if match.groupdict().get("name") else "demonym"
                index = self.names if group == "name" else self.demonyms
                return index.entity(match.group(group)), match.start(group), match.end(group)
        return None
