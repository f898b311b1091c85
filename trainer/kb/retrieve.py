"""Retrieval over the knowledge base: the passages that ground an answer, each with its official source and date.

Every KB entry becomes one or more passages (a destination's student visa, health insurance, work rights and notes; a
university's programmes, each programme it does not offer with the correction, its notes; a scholarship's terms and
eligibility; an admission test; each rule's correcting fact). `Retriever.search(question)` ranks them in two ways:

- **Entities first.** The KB's own name finder (`KnowledgeBase.find_*`, whole-word, alias- and demonym-aware) says
  which countries, universities, scholarships and tests the question names; their passages come first, best BM25
  match first, one per entity in turn, so a question about two countries gets both. A rule whose claim the
  question words (`Rule.mentions`: it states a known false claim), a university's "does not offer" entry for the
  programme asked about, and "not eligible" (a named scholarship the student's home country may not apply for)
  are promoted to the very top: those are the corrections a counsellor must give.
- **BM25 for the rest** (`bm25s`, English stop words, Snowball stemming): fills the remaining places with passages
  that share the question's words, above a floor so an unrelated question retrieves nothing rather than noise.

Why BM25 plus the KB's entity finder, and no embedding model: the KB is small (a few hundred passages) and the
questions that matter name an entity or a rule's words; lexical retrieval with exact entity matching finds those
reliably, builds in milliseconds and ships no model weights (a static-embedding model such as model2vec's would
have to be downloaded from the Hub, which this tool's offline default cannot do). `recall_at_k` measures it on the
rubric's questions, which name the KB entries they need.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

MAX_QUERY_CHARS = 2000
"""Only the first characters of a question are read: a 10,000-character paste costs no more than a long question."""


@dataclass(frozen=True)
class Passage:
    """One retrievable KB fact."""

    id: str
    """Stable id: `<kind>:<entity>[:<detail>]`."""
    kind: str
    """`visa`, `insurance`, `work`, `country-note`, `programmes`, `not-offered`, `university-note`, `scholarship`,
    `not-eligible`, `test`, `system`, `rule`, or the kind of a relation whose fact it is (`post_study_work`,
    `visa_prerequisite`, `test_rule`, `tuition`)."""
    entities: tuple[str, ...]
    """The KB ids (country codes, university, scholarship, test and rule ids) the passage is about."""
    title: str
    text: str
    source: str
    as_of: str


@dataclass(frozen=True)
class Hit:
    passage: Passage
    score: float
    why: str
    """`correction` (a matching rule, not-offered or not-eligible entry), `entity` (names an entity of the
    question) or `bm25` (shares its words)."""


@dataclass(frozen=True)
class RetrievalSettings:
    """How passages are chosen; recorded with grounded eval results and in a grounded stage's lineage."""

    k: int = 5
    """Passages per question."""
    min_bm25: float = 2.0
    """BM25 floor for extra passages when the question names a KB entity (lower: more loosely related passages)."""
    min_bm25_alone: float = 6.0
    """BM25 floor when the question names no KB entity: only a strong match on at least two of its words counts, so
    a general question gets no invented source rather than some country's visa page."""
    method: str = "kb-entities+bm25"

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "k": self.k, "min_bm25": self.min_bm25, "min_bm25_alone": self.min_bm25_alone,
                "library": _library_version()}


def _library_version() -> str:
    from importlib import metadata

    try:
        return f"bm25s {metadata.version('bm25s')}"
    except metadata.PackageNotFoundError:  # pragma: no cover - a pinned requirement
        return "bm25s"


def kb_passages(kb) -> list[Passage]:
    """Every KB fact as a passage, in KB order (ids are stable across loads of the same KB)."""
    out: list[Passage] = []
    names = {c.code: c.name for c in kb.countries}
    for c in kb.countries:
        if c.student_visa is not None:
            v = c.student_visa
            portals = "".join(f" {label}: {url}." for label, url in (("Visa portal", c.visa_portal),
                                                                     ("Study portal", c.study_portal)) if url)
            out.append(Passage(f"visa:{c.code}", "visa", (c.code,), f"{c.name}: {v.name or 'student visa'}",
                               f"{c.name}: the student visa is the {v.name}. {v.text}{portals}", v.source, v.as_of))
        for kind, fact in (("insurance", c.health_insurance), ("work", c.work_rights)):
            if fact is not None:
                out.append(Passage(f"{kind}:{c.code}", kind, (c.code,),
                                   f"{c.name}: {'health insurance' if kind == 'insurance' else 'work rights'}",
                                   f"{c.name}: {fact.text}", fact.source, fact.as_of))
        for n, fact in enumerate(c.notes):
            out.append(Passage(f"country-note:{c.code}:{n}", "country-note", (c.code,), f"{c.name}: note",
                               f"{c.name}: {fact.text}", fact.source, fact.as_of))
    for u in kb.universities:
        where = names.get(u.country, u.country)
        ids = (u.id, u.country)
        if u.programmes:
            listed = "; ".join(f"{p.degree} in {p.field}" for p in u.programmes)
            out.append(Passage(f"programmes:{u.id}", "programmes", ids, f"{u.name}: programmes",
                               f"{u.name} ({where}) offers, among others: {listed}.", u.source, u.as_of))
        for n, neg in enumerate(u.not_offered):
            out.append(Passage(f"not-offered:{u.id}:{n}", "not-offered", ids,
                               f"{u.name} does not offer {neg.degree} in {neg.field}",
                               f"{u.name} does not offer {neg.degree} in {neg.field}: {neg.correction}",
                               neg.source, neg.as_of))
        for n, fact in enumerate(u.notes):
            out.append(Passage(f"university-note:{u.id}:{n}", "university-note", ids, f"{u.name}: note",
                               f"{u.name}: {fact.text}", fact.source, fact.as_of))
    for s in kb.scholarships:
        host = names.get(s.host_country, "several countries") if s.host_country else "several countries"
        status = " It has been discontinued." if s.discontinued else ""
        ids = (s.id,) + ((s.host_country,) if s.host_country else ())
        out.append(Passage(f"scholarship:{s.id}", "scholarship", ids, s.name,
                           f"{s.name} (study in {host}; {', '.join(s.levels)}): {s.about} Eligibility: "
                           f"{s.eligibility.text}{status}", s.source, s.as_of))
    def named_in(text: str) -> tuple[str, ...]:
        # Tests and rules are linked to the entities their text names ("French" -> France for DELF, "Marshall" for
        # a rule about who may apply), so a question naming those entities reaches them.
        return tuple([c.code for c in kb.find_destinations(text)] + [s.id for s in kb.find_scholarships(text)]
                     + [u.id for u in kb.find_universities(text)] + [t.id for t in kb.find_tests(text)])

    for t in kb.tests:
        validity = f" Validity: {t.validity}" if t.validity else ""
        out.append(Passage(f"test:{t.id}", "test", tuple(dict.fromkeys((t.id, *named_in(f"{t.name} {t.about}")))),
                           t.name,
                           f"{t.name}: {t.about} Scores: {t.score_range}.{validity}", t.source, t.as_of))
    for system in kb.systems:
        out.append(Passage(f"system:{system.id}", "system", (system.id, *system.countries, *system.universities),
                           f"{system.name}: applying", f"{system.name}: {system.about}", system.source,
                           system.as_of))
    out += relation_passages(kb, named_in)
    for r in kb.rules:
        ids = tuple(dict.fromkeys((r.id, *((r.country,) if r.country else ()), *named_in(f"{r.claim} {r.fact}"))))
        where = f"{names[r.country]}: " if r.country in names else ""
        # The title names the mistake as one: a list of sources must never show the false claim as a heading.
        out.append(Passage(f"rule:{r.id}", "rule", ids, f"{where}correction of “{r.claim.rstrip('.')}”",
                           f"{where}{r.fact}", r.source, r.as_of))
    return out


def relation_passages(kb, named_in) -> list[Passage]:
    """The facts relations.yaml declares (post-study work lengths, visa documents, test scales, tuition rules), one
    passage each, about the country, test or universities the fact names and the entities its text names."""
    out = []
    for relation in kb.relations:
        for n, fact in enumerate(relation.facts):
            text = getattr(fact, "fact", None)
            if not text:
                continue
            own = [getattr(fact, key, None) for key in ("country", "test")] + list(getattr(fact, "universities", ()))
            ids = tuple(dict.fromkeys([i for i in own if i] + list(named_in(text))))
            label = getattr(fact, "name", None) or next((i for i in own if i), relation.id)
            out.append(Passage(f"{relation.id}:{n}", relation.kind, ids,
                               f"{label}: {relation.kind.replace('_', ' ')}", text, fact.source, fact.as_of))
    return out


def not_eligible_passages(kb) -> list[Passage]:
    """One passage per scholarship and nationality the KB records as excluded from it."""
    names = {c.code: c.name for c in kb.countries}
    out = []
    for s in kb.scholarships:
        for code in sorted(s.eligibility.excluded):
            if code in names:
                out.append(Passage(f"not-eligible:{s.id}:{code}", "not-eligible", (s.id, code),
                                   f"{s.name}: not open to citizens of {names[code]}",
                                   f"Citizens of {names[code]} are not eligible for {s.name}. Eligibility: "
                                   f"{s.eligibility.text}", s.source, s.as_of))
    return out


_DEGREE_WORDS = re.compile(r"\b(?:bachelor|master|phd|doctor|mba|msc|ma|ba|bsc|llm|llb|mbbs|md|meng|beng|degree|"
                           r"undergraduate|postgraduate|programme|program|course)s?\b", re.IGNORECASE)


@dataclass
class Retriever:
    """BM25 over every KB passage plus the KB's entity finder. Build once (`Retriever(kb)`), search many times."""

    kb: Any
    settings: RetrievalSettings = field(default_factory=RetrievalSettings)
    passages: list[Passage] = field(init=False)
    build_seconds: float = field(init=False)

    def __post_init__(self):
        import bm25s
        import Stemmer

        started = time.perf_counter()
        self.passages = kb_passages(self.kb)
        self._stemmer = Stemmer.Stemmer("english")
        tokens = bm25s.tokenize([f"{p.title} {p.text}" for p in self.passages], stopwords="en",
                                stemmer=self._stemmer, return_ids=False, show_progress=False)
        self._index = bm25s.BM25()
        self._index.index(tokens, show_progress=False)
        self._terms = [frozenset(t) for t in tokens]
        # "Not eligible" passages are reached only through a question's home country and scholarship, never by
        # words alone, so they are added after the BM25 index (their BM25 score is 0).
        self.passages += not_eligible_passages(self.kb)
        self._by_entity: dict[str, list[int]] = {}
        for i, p in enumerate(self.passages):
            for entity in p.entities:
                self._by_entity.setdefault(entity, []).append(i)
        self._by_id = {p.id: i for i, p in enumerate(self.passages)}
        self._rules = {r.id: r for r in self.kb.rules}
        self.build_seconds = time.perf_counter() - started

    def entities(self, question: str) -> list[str]:
        """KB ids of the countries, universities, scholarships and tests `question` names (a country also by a term only
        it uses: F-1, CAS, OSHC), in order of mention."""
        kb = self.kb
        found = [c.code for c in kb.find_destinations(question)]  # named, or known by its own terms (F-1: the US)
        found += [u.id for u in kb.find_universities(question)]
        found += [s.id for s in kb.find_scholarships(question)]
        found += [t.id for t in kb.find_tests(question)]
        return list(dict.fromkeys(found))

    def _bm25(self, text: str):
        """BM25 score of every indexed passage, and the question's (stemmed) terms the index knows."""
        import bm25s
        import numpy as np

        query = bm25s.tokenize([text[:MAX_QUERY_CHARS]], stopwords="en", stemmer=self._stemmer, return_ids=False,
                               show_progress=False)[0]
        query = [t for t in dict.fromkeys(query) if t in self._index.vocab_dict]
        if not query:
            return np.zeros(len(self._terms), dtype=np.float32), ()
        return self._index.get_scores(query), query

    def _corrections(self, question: str, entities: Sequence[str]) -> list[int]:
        """Passages that correct what the question assumes: a rule it states, a programme a named university does
        not offer, a named scholarship the student's home country may not apply for."""
        kb, out = self.kb, []
        head = question[:MAX_QUERY_CHARS]
        named = {c.code for c in kb.find_destinations(head)}
        for rule in kb.rules_in(head):
            if rule.country and named and rule.country not in named:  # another destination's rule (US Medicaid)
                continue
            if rule.mentions(head):
                out.append(self._by_id[f"rule:{rule.id}"])
        if _DEGREE_WORDS.search(head):
            for u in kb.find_universities(head):
                for n, neg in enumerate(u.not_offered):
                    if re.search(rf"\b{re.escape(neg.field)}\b", head, re.IGNORECASE):
                        out.append(self._by_id[f"not-offered:{u.id}:{n}"])
        home = kb.home_country(head)
        if home is not None:
            for sid in entities:
                if sid in self._rules or sid not in {s.id for s in kb.scholarships}:
                    continue
                if kb.eligible(sid, home.code) is False and f"not-eligible:{sid}:{home.code}" in self._by_id:
                    out.append(self._by_id[f"not-eligible:{sid}:{home.code}"])
        return list(dict.fromkeys(out))

    def search(self, question: str, k: int | None = None) -> list[Hit]:
        """The `k` passages that best ground an answer to `question`; empty when it touches no KB entry."""
        k = self.settings.k if k is None else k
        if k <= 0 or not question.strip():
            return []
        question = question[:MAX_QUERY_CHARS]
        scores, terms = self._bm25(question)
        entities = self.entities(question)
        chosen: dict[int, Hit] = {}

        def score(i: int) -> float:
            return float(scores[i]) if i < len(scores) else 0.0  # not-eligible passages are not in the index

        def take(i: int, why: str) -> None:
            if len(chosen) < k and i not in chosen:
                chosen[i] = Hit(self.passages[i], round(score(i), 4), why)

        for i in self._corrections(question, entities):
            take(i, "correction")
        # One passage per named entity in turn (its best BM25 match first), until k are chosen.
        queues = [sorted((i for i in self._by_entity.get(e, ()) if self.passages[i].kind != "not-eligible"),
                         key=lambda i: -score(i)) for e in entities]
        while len(chosen) < k and any(queues):
            for queue in queues:
                while queue and queue[0] in chosen:
                    queue.pop(0)
                if queue:
                    take(queue.pop(0), "entity")
        floor = self.settings.min_bm25 if chosen or entities else self.settings.min_bm25_alone
        if len(chosen) < k:
            for i in scores.argsort()[::-1][: k * 3]:
                if scores[i] < floor:
                    break
                if chosen or entities or sum(t in self._terms[i] for t in terms) >= 2:
                    take(int(i), "bm25")
        return list(chosen.values())


def recall_at_k(retriever: Retriever, questions: Iterable[tuple[str, Sequence[str]]], k: int = 5) -> dict[str, Any]:
    """Share of the KB entries each question needs that appear among its top-k passages' entities, averaged over
    the questions that name any (the rubric's `kb` field). Returns the mean, n and the misses."""
    per_question, misses = [], []
    for question, needed in questions:
        if not needed:
            continue
        got = {e for hit in retriever.search(question, k) for e in hit.passage.entities}
        found = [e for e in needed if e in got]
        per_question.append(len(found) / len(needed))
        if len(found) < len(needed):
            misses.append({"question": question[:120], "missing": [e for e in needed if e not in got]})
    return {"k": k, "n": len(per_question), "recall": sum(per_question) / len(per_question) if per_question
            else None, "per_question": per_question, "misses": misses}


def correction_text(corrections: Sequence[Any]) -> str:
    """The question's false premises with the KB facts that correct them (`trainer.kb.premise.Correction`), as the block
    that opens a grounded system message: the model is told to correct each before anything else."""
    lines = ["The question rests on a false premise. Begin the answer by correcting it politely (never agree with "
             "it), then answer what can be answered:"]
    lines += [f"- The question assumes: {c.claim} The knowledge base says: {c.fact} (source: {c.source}, as of "
              f"{c.as_of})" for c in corrections]
    return "\n".join(lines)


def grounding_text(hits: Sequence[Hit], corrections: Sequence[Any] = ()) -> str:
    """The retrieved passages as the numbered fact list that goes into a system message (the model is asked to
    cite them as [n]), after the corrections of the question's false premises when there are any; rendered into the
    prompt by the adapter's own chat template, like any system message."""
    head = [correction_text(corrections)] if corrections else []
    if not hits:
        if head:  # the correction is the verified fact the answer needs
            return head[0]
        return ("No entry of the knowledge base matches this question. Say that you have no verified source for "
                "it and point the student to the official university or government page; do not invent a source.")
    lines = ["Verified facts from the knowledge base (cite them as [1], [2] ...; if they do not answer the question, "
             "say so instead of guessing):"]
    lines += [f"[{n}] {h.passage.text} (source: {h.passage.source}, as of {h.passage.as_of})"
              for n, h in enumerate(hits, 1)]
    return "\n\n".join(head + ["\n".join(lines)])


def conversation_query(messages: Sequence[dict[str, str]]) -> str:
    """What a whole conversation asks: its user turns, joined (the retriever reads the first MAX_QUERY_CHARS)."""
    return "\n".join(m["content"] for m in messages if m["role"] == "user")


def grounded_messages(messages: Sequence[dict[str, str]], hits: Sequence[Hit],
                      corrections: Sequence[Any] = ()) -> list[dict[str, str]]:
    """`messages` with the retrieved facts appended to the system message (one is added when there is none), the
    corrections of the question's false premises (`trainer.kb.premise.Correction`) first."""
    facts = grounding_text(hits, corrections)
    out = [dict(m) for m in messages]
    if out and out[0]["role"] == "system":
        out[0]["content"] = (out[0]["content"].rstrip() + "\n\n" + facts).strip()
    else:
        out.insert(0, {"role": "system", "content": facts})
    return out
