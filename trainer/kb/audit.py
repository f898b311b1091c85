"""`python -m trainer audit FILE`: rule checks that keep hallucinations out of stage-1 data.

Each conversation gets flags. `fail` flags send it to the audit split (never to training); `verify` flags keep it
but mark what a person should check. Rules:

- structure: roles, turn order, turn count; an answer without markdown structure is `verify` (`no_markdown`)
- length: answers too short or too long
- language: answers that are not English, by script, then by a language identifier (`trainer/data/language.py`)
- placeholder: template slots left in the text ("[University Name]", "{program}", "XYZ University")
- near_duplicate: MinHash (bottom-k over byte 8-grams, `trainer/data/near_dup.py`) similarity with an earlier
  conversation
- kb_contradiction: a knowledge-base rule's false claim stated in a sentence without correction (Medicare for
  international students in Australia, the retired "Tier 4" visa name, ...), matched by meaning (`Rule.in_sentence`)
  in conversations about the rule's country (named, or known by its own terms: F-1, CAS, OSHC)
- programme_not_offered: a programme the KB says a university does not offer, asked about and not corrected
- scholarship_ineligible: a scholarship recommended to a student from a country the KB says is not eligible
- scholarship_discontinued: a discontinued scholarship presented as open
- unknown_scholarship: a named scholarship, fellowship or award that is not in the KB (`verify`, or `fail` for
  generated data, where every name should come from the KB)
- unknown_name: a named app, portal, agency, survey or programme ("Global Education Survey") that is not a KB entity,
  the organisation of a KB source or a well-known body (`verify`)
- unverified_number: a figure for an attribute the KB describes (work hours, fees, a visa's or test result's length,
  a test score, an insurance share) that no KB fact of the entity it is about carries (`verify`): the entities its
  sentence names (a university's or scholarship's country too), else the conversation's; "95% of graduates" is not
- llm_judge: optional, a model asked whether the answer contradicts the KB facts (`generate --judge`: rows that pass
  the rules; `trainer audit --judge URL`: every row, and the report lists where the judge and the KB rules disagree)

The claims the rules look for (numbers, names, programmes) are found by `trainer.kb.claims`. Rules are compiled once
and triggered by keyword, so the audit stays linear in the data; from 1,000 conversations up the per-row rules run in 2
forked processes, and near-duplicates are counted with numpy (BENCHMARKS.md).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from trainer.data.language import answer_language
from trainer.kb.audit_report import LIVE_CHECK_RULES, AuditError, AuditReport, AuditSettings, RowAudit
from trainer.kb.caseless import CaselessPattern, lowered
from trainer.kb.claims import (AWARD_NAME_BEFORE, AWARD_STOPWORDS, AWARD_TOKENS, AWARD_WORD, COMMON_TEST_WORDS, FAIL,
                               GENERIC_NAME_WORDS, KNOWN_BODY, LOWER_CASE_NAME_WORDS, NAME_LEAD_WORDS, NAME_TOKENS,
                               NEXT_CAPITAL, NUMBER_KINDS, SCORE_TOKENS, UNIT_TOKENS, VERIFY, Flag, attribute_near,
                               compact_name, entities_by_number, entity_key, names_scholarship, numbers_at,
                               programme_pattern, sentence_at, source_labels)
from trainer.kb.loader import SHIPPED_KB
from trainer.kb.schema import SENTENCE

PLACEHOLDER = re.compile(
    r"\[(?:(?:your|the|insert|enter|add|target|chosen|preferred|selected|student'?s?|applicant'?s?|full)\s+)?"
    r"(?:university|college|program(?:me)?|course|country|city|name|insert|field|degree|company|school|scholarship|"
    r"amount|date|deadline)[^\]]{0,30}\](?!\()|\{[a-z_]{2,30}\}|<insert[^>]*>|\bXYZ (?:University|"
    r"College|Scholarship)\b|\bABC (?:University|College)\b|\blorem ipsum\b", re.IGNORECASE)
"""Template slots: "[University Name]", "[Your University]", "{program}", "XYZ University"; a markdown link's text
("[the university's admissions page](https://...)") is not one."""
MARKDOWN = re.compile(r"^\s{0,3}(?:#{1,6}\s|[-*+]\s|\d+[.)]\s)|\*\*[^*]+\*\*", re.MULTILINE)
NEGATION = re.compile(
    r"\b(?:not|no|never|isn't|aren't|doesn't|don't|didn't|cannot|can't|won't|wasn't|unavailable|ineligible|"
    r"discontinued|replaced|retired|closed|ended|no longer|only (?:as|after|for)|instead|however|but)\b",
    re.IGNORECASE)


def _negated(text: str) -> bool:
    """Whether NEGATION occurs in `text`."""
    return _NEGATION.span(text, lowered(text)) is not None


_NEGATION = CaselessPattern(NEGATION)
_PLACEHOLDER = CaselessPattern(PLACEHOLDER)


PLACEHOLDER_HINTS = ("[", "{", "<insert", "XYZ ", "ABC ", "orem ipsum")


PARALLEL_FROM_ROWS = 1000
"""From this many conversations up, the per-row rules run in 2 processes (forking costs ~20 ms)."""
CHUNK_ROWS = 32
"""Conversations per claim when processes share the rows: small enough to balance, large enough to be cheap."""
_FORKED: tuple[Any, Any, Any] | None = None
"""(auditor, conversations, next chunk counter) while `Auditor.audit` forks: what the forked processes work on."""


def _claimed_chunks(auditor, conversations, counter) -> dict[int, list[tuple[list[Any], Any]]]:
    """Chunk index -> rows, for every chunk this process claims until none is left."""
    done = {}
    while True:
        with counter.get_lock():
            chunk = counter.value
            counter.value += 1
        start = chunk * CHUNK_ROWS
        if start >= len(conversations):
            return done
        done[chunk] = auditor._rows_between(conversations, start, min(start + CHUNK_ROWS, len(conversations)))


def _chunks_in_fork() -> dict[int, list[tuple[list[Any], Any]]]:
    return _claimed_chunks(*_FORKED)


class Auditor:
    """Audit conversations (lists of messages) against the rules and, when given, a knowledge base."""

    def __init__(self, kb=None, settings: AuditSettings = AuditSettings(),
                 judge: Callable[[list[dict[str, str]], list[Any]], tuple[bool | None, str]] | None = None):
        self.kb, self.settings, self.judge = kb, settings, judge
        self._known_awards: set[str] = set()
        if kb is not None:
            self._owners = entities_by_number(kb)
            self._known_awards = {n.lower() for n in kb.known_scholarship_names()}
            self._known_sites = source_labels(kb)
            self._invented: dict[str, bool] = {}
            self._keys_of: tuple[str | None, set[tuple[str, str]]] = (None, set())
            self._test_tokens = {kb.words(n.split()[0]) for t in kb.tests for n in (t.name, *t.aliases)}
            self._test_tokens = {w for words in self._test_tokens for w in words} - COMMON_TEST_WORDS
            self._discontinued = [s for s in kb.scholarships if getattr(s, "discontinued", False)]
            self._gates = {r.id: [CaselessPattern(p) for p in r.patterns] for r in kb.rules}

    def audit(self, conversations: Sequence[Sequence[dict[str, str]]],
              locations: Sequence[str] | None = None) -> AuditReport:
        """Flag every conversation; `locations` (file:line, as ingestion names rows) name them in the report."""
        started = time.perf_counter()
        per_row = self._per_row(conversations)
        rows = [RowAudit(i, flags, locations[i] if locations else None) for i, (flags, _) in enumerate(per_row)]
        from trainer.data.near_dup import SKETCH_SIZE, near_duplicates_of_sketches

        found = near_duplicates_of_sketches([sketch for _, sketch in per_row], self.settings.near_duplicate,
                                            SKETCH_SIZE)
        for i, (j, similarity) in found.items():
            rows[i].flags.append(Flag("near_duplicate", FAIL, f"{similarity:.0%} similar to {rows[j].where}"))
        if self.judge is not None:
            for row, messages in zip(rows, conversations):
                if self.settings.judge_all or not row.failed:
                    ok, reason = self.judge(list(messages), self._facts(messages))
                    row.judge = {"verdict": {True: "ok", False: "error"}.get(ok, "no verdict"), "reason": reason}
                    if ok is False:
                        row.flags.append(Flag("llm_judge", FAIL, reason[:300]))
        return AuditReport(rows, time.perf_counter() - started, getattr(self.kb, "version", None),
                           getattr(self.kb, "path", None))

    def _per_row(self, conversations: Sequence[Sequence[dict[str, str]]]) -> list[tuple[list[Flag], Any]]:
        """(flags, MinHash sketch) per conversation, in order; split over forked processes on large inputs."""
        processes = self._processes(len(conversations))
        if processes < 2:
            return self._rows_between(conversations, 0, len(conversations))
        import multiprocessing

        global _FORKED
        # Every process (this one too) claims the next chunk of rows from a shared counter until none is left, so
        # a process that gets less CPU (other jobs on the machine) simply does fewer chunks.
        context = multiprocessing.get_context("fork")
        counter = context.Value("q", 0)
        _FORKED = (self, conversations, counter)  # inherited by the forked processes; only results are pickled
        try:
            with context.Pool(processes - 1) as pool:
                others = [pool.apply_async(_chunks_in_fork) for _ in range(processes - 1)]
                done = _claimed_chunks(self, conversations, counter)
                for other in others:
                    done.update(other.get())
        finally:
            _FORKED = None
        return [row for chunk in sorted(done) for row in done[chunk]]

    def _rows_between(self, conversations, start: int, end: int) -> list[tuple[list[Flag], Any]]:
        from trainer.data.near_dup import sketch

        out = []
        for messages in conversations[start:end]:
            text = "\n".join([c for m in messages if isinstance(c := m.get("content"), str)])
            out.append((self._row_flags(messages), sketch(text)))
        return out

    def _processes(self, rows: int) -> int:
        import multiprocessing
        import os
        import threading

        wanted = self.settings.workers
        if wanted == 1 or (wanted == 0 and rows < PARALLEL_FROM_ROWS):
            return 1
        # Forking a process that runs other threads can deadlock the child (a lock held at the fork stays held).
        if "fork" not in multiprocessing.get_all_start_methods() or threading.active_count() > 1:
            return 1
        if wanted > 1:
            return min(wanted, rows)
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return min(2, cpus)

    def _facts(self, messages) -> list[Any]:
        if self.kb is None:
            return []
        text = " ".join(m["content"] for m in messages)
        kb = self.kb
        return kb.facts_for(countries=kb.find_destinations(text), universities=kb.find_universities(text),
                            scholarships=kb.find_scholarships(text), tests=kb.find_tests(text))

    def _row_flags(self, messages: Sequence[dict[str, str]]) -> list[Flag]:
        from trainer.data.conversations import RowProblem, check_turns

        s = self.settings
        flags: list[Flag] = []
        try:
            check_turns([{"role": m.get("role"), "content": m.get("content")} for m in messages])
        except (RowProblem, KeyError, TypeError, AttributeError) as exc:
            return [Flag("structure", FAIL, getattr(exc, "detail", None) or str(exc))]
        if not s.min_messages <= len(messages) <= s.max_messages:
            flags.append(Flag("structure", FAIL, f"{len(messages)} messages, expected {s.min_messages}-"
                                                 f"{s.max_messages}"))
        answers = [(i, m["content"]) for i, m in enumerate(messages) if m["role"] == "assistant"]
        for i, answer in answers:
            if len(answer) < s.min_answer_chars:
                flags.append(Flag("length", FAIL, f"answer of {len(answer)} characters", i))
            elif len(answer) > s.max_answer_chars:
                flags.append(Flag("length", FAIL, f"answer of {len(answer):,} characters", i))
            if (language := answer_language(answer)) is not None:
                flags.append(Flag("language", FAIL, f"the answer reads as {language}, not English", i))
            if any(h in answer for h in PLACEHOLDER_HINTS) and (at := _PLACEHOLDER.span(answer, lowered(answer))):
                flags.append(Flag("placeholder", FAIL, f"template slot left in: {answer[at[0]:at[1]]!r}", i))
        if answers and not any(MARKDOWN.search(a) for _, a in answers):
            flags.append(Flag("no_markdown", VERIFY, "no heading, list or bold text in any answer"))
        if self.kb is not None:
            flags.extend(self._kb_flags(messages, answers))
        return flags

    def check_answer(self, messages: Sequence[dict[str, str]]) -> list[Flag]:
        """The audit's KB rules on the last answer of a conversation: the app's live check before an answer is shown
        as final. The same code as `trainer audit` (a false claim a rule knows, a programme the university does not
        offer left uncorrected, a scholarship the student's home country may not apply for, a discontinued scheme);
        each flag names the KB fact and carries its source. Empty without a KB or an answer."""
        if self.kb is None:
            return []
        answers = [(i, m["content"]) for i, m in enumerate(messages) if m.get("role") == "assistant"
                   and isinstance(m.get("content"), str)]
        if not answers:
            return []
        last = answers[-1][0]
        asked = max((i for i, m in enumerate(messages[:last]) if m.get("role") == "user"), default=None)
        flags = [f for f in self._kb_flags(list(messages[:last + 1]), answers[-1:])
                 if f.rule in LIVE_CHECK_RULES and f.message in (last, asked)]
        if asked is not None:  # the question's false premises: the answer must carry each correction
            corrections = self.premise_corrections(messages[asked:asked + 1])
            if any(f.rule == "programme_not_offered" for f in flags):  # the same finding, already flagged
                corrections = [c for c in corrections if c.kind not in ("programme", "degree_entry")]
            flags += self.premise.check_answer(corrections, answers[-1][1], last)
        return flags

    @property
    def premise(self):
        """The KB's premise check (`trainer.kb.premise.PremiseChecker`), built on first use."""
        if getattr(self, "_premise", None) is None:
            from trainer.kb.premise import PremiseChecker

            self._premise = PremiseChecker(self.kb)
        return self._premise

    def premise_corrections(self, messages: Sequence[dict[str, str]]) -> list[Any]:
        """The corrections the user turns of `messages` call for (`PremiseChecker.check`); empty without a KB."""
        return self.premise.check(list(messages)) if self.kb is not None else []

    def _kb_flags(self, messages, answers) -> list[Flag]:
        kb, flags = self.kb, []
        user_text = kb.joined([m["content"] for m in messages if m["role"] == "user"])
        all_text = kb.joined([m["content"] for m in messages])
        countries = {c.code for c in kb.find_destinations(all_text)}
        # Rules: a false claim stated in an answer sentence without a correction. Only rules whose keywords occur in
        # the answer (a set lookup on words split once), whose country the conversation is about and whose patterns
        # all occur in the answer can match, so only those are tried sentence by sentence.
        for i, answer in answers:
            low = lowered(answer)
            candidates = [r for r in kb.rules_in(answer) if (not r.country or r.country in countries)
                          and all(gate.span(answer, low) is not None for gate in self._gates[r.id])]
            if not candidates:
                continue
            for sentence in SENTENCE.split(answer):
                for rule in candidates:
                    if rule.in_sentence(sentence):
                        flags.append(Flag("kb_contradiction", FAIL, f"{rule.id}: {rule.claim} ({rule.fact})", i,
                                          rule.source))
        # Programmes a university does not offer, asked about in a user message that names the university: the
        # next answer must correct the premise. Each (university, programme) is checked at its first question.
        asked: set[tuple[str, str, str]] = set()
        for i, m in enumerate(messages):
            if m["role"] != "user" or not m["content"]:
                continue
            for university in kb.find_universities(m["content"]):
                for negative in university.not_offered:
                    key = (university.id, negative.degree, negative.field)
                    if key in asked or not programme_pattern(negative.degree, negative.field).search(m["content"]):
                        continue
                    asked.add(key)
                    reply = next((a for j, a in answers if j > i), "")
                    if not _negated(reply):
                        flags.append(Flag("programme_not_offered", FAIL,
                                          f"{university.name} does not offer {negative.degree} {negative.field}; "
                                          f"the answer does not say so ({negative.correction})", i,
                                          negative.source))
        # Scholarships: eligibility for the student's home country, discontinued schemes, unknown names.
        home = kb.home_country(user_text)
        for i, answer in answers:
            split = None
            for scholarship in kb.find_scholarships(answer):
                split = SENTENCE.split(answer) if split is None else split
                sentences = [x for x in split if names_scholarship(x, scholarship)]
                corrected = any(_negated(x) for x in sentences)
                if home is not None and kb.eligible(scholarship.id, home.code) is False and not corrected:
                    flags.append(Flag("scholarship_ineligible", FAIL,
                                      f"{scholarship.name} recommended to a student from {home.name}, who is not "
                                      "eligible", i, scholarship.source))
                if getattr(scholarship, "discontinued", False) and not corrected:
                    flags.append(Flag("scholarship_discontinued", FAIL, f"{scholarship.name} has been discontinued",
                                      i, scholarship.source))
            if answer.isascii() and AWARD_TOKENS.isdisjoint(kb.words(answer)):
                matches = ()  # no award word: skip the scan
            else:
                matches = AWARD_WORD.finditer(answer)
            for match in matches:
                before = AWARD_NAME_BEFORE.search(answer, max(0, match.start() - 120), match.start())
                if before is None:
                    continue
                name = before.group(0) + match.group(0)
                words = name.split()
                while words and words[0].lower().strip(",.") in AWARD_STOPWORDS:
                    words = words[1:]
                if len(words) < 2:
                    continue
                name = " ".join(words)
                if not any(known in name.lower() or name.lower() in known for known in self._known_awards):
                    flags.append(Flag("unknown_scholarship", self.settings.unknown_scholarship,
                                      f"{name!r} is not in the knowledge base", i))
            flags += [Flag("unknown_name", VERIFY, f"{name!r} is not in the knowledge base", i)
                      for name in self._unknown_names(answer)]
            unverified = self._unverified_numbers(answer, all_text)
            if unverified:
                flags.append(Flag("unverified_number", VERIFY, "not in the KB: " + ", ".join(unverified[:5]), i))
        return flags


    def _unverified_numbers(self, answer: str, all_text: str) -> list[str]:
        """The answer's figures for an attribute the KB describes (work hours, fees, a visa's length, a test score,
        an insurance share), as written, that no KB fact of the entity they are about carries. A figure is about the
        entities its sentence names whose kind the KB describes that way, or, failing those, the conversation's; a
        figure about no such entity ("95% of graduates", "over 200 programmes") is not the KB's to verify."""
        unverified: dict[str, None] = {}
        about: dict[tuple[int, int], set[tuple[str, str]]] = {}
        # a number without a unit can only be a test's score: looked at in answers with a score word and the first
        # word of a test's name (`find_tests`, run where such a number is found, costs more)
        words = self.kb.words(answer)
        bare = not SCORE_TOKENS.isdisjoint(words) and not self._test_tokens.isdisjoint(words)
        if not bare and UNIT_TOKENS.isdisjoint(words) and not any(c in answer for c in "%$€£₹¥"):
            return []  # no figure with a unit or currency
        shown_to = -1
        # Lengths in words ("six months", "three years") are read in KB facts only: in answers they were mostly
        # right and mostly unknown to the KB (the KB-checked seed dialogues got 1 in 6 rows flagged for them).
        for start, end, kind, value in numbers_at(answer, bare=bare, in_words=False):
            if start < shown_to:
                continue  # the second half of a range already shown ("6-8 weeks")
            span = sentence_at(answer, start)
            if not attribute_near(answer, span, start, end, kind):
                continue
            if span not in about:
                about[span] = self._entity_keys(answer[span[0]:span[1]])
            keys = {k for k in about[span] if kind in NUMBER_KINDS.get(k[0], ())}
            if not keys:
                keys = {k for k in self._conversation_keys(all_text) if kind in NUMBER_KINDS.get(k[0], ())}
            if keys and self._owners.get((kind, value), frozenset()).isdisjoint(keys):
                unverified[" ".join(answer[start:end].split())] = None
                shown_to = end
        return list(unverified)

    def _unknown_names(self, answer: str) -> list[str]:
        """The apps, portals, agencies, surveys and programmes `answer` names that the KB does not know ("the
        UniMatch app", "Global Education Survey"): not a KB entity with only describing words around it ("the Oxford
        MBA Program"), not the organisation of a KB source's site (campusfrance.org: "Campus France"), not one of
        KNOWN_BODIES. Awards are `unknown_scholarship`'s."""
        found: dict[int, str] = {}
        # str.find for the last words the answer has, a few times faster than one alternation tried everywhere
        for token in NAME_TOKENS.intersection(self.kb.words(answer)):
            word = token.decode()
            for form in (word.capitalize(), word) if token in LOWER_CASE_NAME_WORDS else (word.capitalize(),):
                at = answer.find(form)
                while at > 0:
                    end = at + len(form)
                    if not (answer[end:end + 1].isalnum() or NEXT_CAPITAL.match(answer, end)) and \
                            (before := AWARD_NAME_BEFORE.search(answer, max(0, at - 120), at)) is not None:
                        words = before.group(0).split()
                        while words and words[0].lower().strip(",.:") in NAME_LEAD_WORDS:
                            words = words[1:]
                        name = " ".join([*words, form])
                        if name not in self._invented:
                            self._invented[name] = bool(words) and self._invented_name(name, " ".join(words))
                        if self._invented[name]:
                            found[before.start()] = name
                    at = answer.find(form, end)
        return list(dict.fromkeys(found[at] for at in sorted(found)))

    def _invented_name(self, name: str, words: str) -> bool:
        """Whether `name` ("Global Education Survey"; `words`, the name without its last word) is none of the
        bodies `_unknown_names` knows."""
        low = name.lower()
        if compact_name(words) in self._known_sites or compact_name(name) in self._known_sites:
            return False  # "Campus France", "DAAD Portal"
        if AWARD_TOKENS.intersection(self.kb.words(name)) or KNOWN_BODY.search(low):
            return False
        kb = self.kb
        for entity in (*kb.find_countries(name), *kb.find_universities(name), *kb.find_scholarships(name),
                       *kb.find_tests(name)):
            for known in (entity.name, *getattr(entity, "aliases", ()), *getattr(entity, "demonyms", ())):
                low = re.sub(rf"\b{re.escape(known.lower())}\b", " ", low)
        return any(w.strip(",.:()") not in GENERIC_NAME_WORDS for w in re.sub(r"['’]s\b", "", low).split()[:-1])

    def _conversation_keys(self, all_text: str) -> set[tuple[str, str]]:
        """`_entity_keys` of a conversation's text, kept for its next answers."""
        if self._keys_of[0] is not all_text:
            self._keys_of = (all_text, self._entity_keys(all_text))
        return self._keys_of[1]

    def _entity_keys(self, text: str) -> set[tuple[str, str]]:
        """The KB entities `text` is about, as `entity_key`s: destinations, universities, scholarships and tests it
        names, and the countries of the universities and scholarships."""
        kb = self.kb
        keys = {entity_key(e) for e in (*kb.find_destinations(text), *kb.find_tests(text))}
        for entity in (*kb.find_universities(text), *kb.find_scholarships(text)):
            keys.add(entity_key(entity))
            home = getattr(entity, "country", None) or getattr(entity, "host_country", None)
            if home is not None:
                keys.add(("Country", home))
        return keys


def audit_file(path: str | Path, kb_path: str | Path | None = SHIPPED_KB, settings: AuditSettings = AuditSettings(),
               out_dir: str | Path | None = None, *, against: str | Path | None = None, judge=None) -> AuditReport:
    """Audit a dataset file (any schema `trainer.data.conversations` reads) against the KB at `kb_path` (None: without
    a KB, which the report says); with `against`, list its rows also found in that file; write `audit.jsonl`,
    `audit.md` and `summary.json` to `out_dir`. A KB folder that does not exist is an error, never a silent skip."""
    from trainer.data.conversations import load_conversations
    from trainer.data.settings import DatasetSettings

    kb = None
    if kb_path is not None:
        from trainer.kb.loader import load_kb

        kb = load_kb(kb_path)
    conversations, data_report = load_conversations(DatasetSettings(path=str(path), max_bad_fraction=1.0,
                                                                    eval_fraction=0))
    report = Auditor(kb, settings, judge).audit([list(c.messages) for c in conversations],
                                                [c.location for c in conversations])
    report.ingestion = data_report
    if against is not None:
        from trainer.data.contamination import rows_also_in

        report.against = rows_also_in(conversations, against)
    if out_dir is not None:
        out = Path(out_dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
            with open(out / "audit.jsonl", "w", encoding="utf-8") as fh:
                for conv, row in zip(conversations, report.rows):
                    fh.write(json.dumps({"source": conv.location, **row.to_dict()}, ensure_ascii=False) + "\n")
            (out / "audit.md").write_text(report.markdown(str(path)), encoding="utf-8")
            (out / "summary.json").write_text(json.dumps(report.summary(), indent=2, ensure_ascii=False) + "\n",
                                              encoding="utf-8")
        except OSError as exc:
            raise AuditError(f"{out}: cannot write the audit report there ({exc.strerror or exc})") from None
    return report


def split_by_audit(rows: Iterable[Any], report: AuditReport) -> tuple[list[Any], list[Any]]:
    """(passed, failed) in input order."""
    passed, failed = [], []
    for row, audit in zip(rows, report.rows):
        (failed if audit.failed else passed).append(row)
    return passed, failed
