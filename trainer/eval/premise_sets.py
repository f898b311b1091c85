"""The premise check measured on sets it was not written from: the held-out template set generated from the KB's
relations (`generate`, seeded), the visitor-voice sets written by separate authors, and the rubric; `measure` gives
recognition, agreeing and correcting answers flagged and false alarms. `bench/premise_set.py` prints the table
(BENCHMARKS.md, docs/evaluation.md) and rewrites the held-out file; `tests/test_premise.py` holds the floors.

The templates below were written from the relations alone (a document of one country asked about for another, a
country or university placed in a set it is not in, a programme, an entry route or a test the country does not use,
an award asked about for another destination, university, level or nationality), in wordings of their own, before
the check was run on them. The rules (`data/kb/*.yaml`) are never tuned on these files: tests/test_premise.py keeps
their questions out of the KB's examples and checks the held-out file is what `generate` writes.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from trainer import REPO_ROOT as REPO

HELD_OUT = REPO / "data" / "eval" / "premise_heldout.jsonl"
VISITORS = REPO / "data" / "eval" / "premise_visitors.jsonl"
"""Questions in visitors' voices, written by someone without access to the checker (never tuned on)."""
SEALED = REPO / "data" / "eval" / "premise_visitors_sealed.jsonl"
"""A second such set, written after the checker was finished and measured once: how it does on new wording."""
SEED = 20261206

DOCUMENT_Q = [
    "How long does it usually take to get my {doc} for studying in {place}?",
    "My university in {place} still hasn't sent the {doc}. Should I be worried?",
    "Apart from the {doc}, which papers do I need for my student visa to {place}?",
    "Once my {doc} is approved, can I work part-time in {place}?",
    "Do universities in {place} charge anything for issuing the {doc}?",
    "I was admitted to {uni}; when will they send me my {doc}?",
]
DOCUMENT_A = ("The {doc} is what you need for {place}.", "For {place}, the {doc} is a {owner} document, not a "
              "{place} one; there you need the {visa}.")
GROUP_COUNTRY_Q = [
    "Since {entity} is part of the {group}, will my residence permit let me travel freely?",
    "{entity} belongs to the {group}, so do the same student rules apply there as elsewhere?",
    "Being in the {group}, does {entity} give students any special benefits?",
    "As {entity} is a {group} member, what does that mean for my visa?",
]
GROUP_UNI_Q = [
    "What GPA do I need for {entity}, given that it's an {group} university?",
    "{entity} is one of the {group}, so is it very expensive for internationals?",
    "I'm applying to {entity} and the other {group} universities; any tips?",
    "How selective is {entity} compared with the rest of the {group}?",
]
GROUP_A = ("{entity} is in the {group}.", "{entity} is not a member of the {group}.")
PROGRAMME_Q = [
    "What are the entry requirements for the {degree} in {field} at {uni}?",
    "How many international students join {uni}'s {degree} in {field} each year?",
    "Is the {degree} in {field} at {uni} taught in English?",
    "What does the {degree} in {field} at {uni} cost per year?",
]
PROGRAMME_A = ("{uni} offers the {degree} in {field}.", "{uni} does not offer a {degree} in {field}.")
ENTRY_Q = [
    "Can I apply to study {field} at {uni} directly after finishing high school?",
    "Which universities in {place} let school leavers start an undergraduate {field} degree?",
    "I'm in grade 12 now; how do I apply for a bachelor's in {field} in {place}?",
    "What is the tuition for an undergraduate {field} degree at {uni}?",
]
ENTRY_A = ("You can start {field} at undergraduate level in {place}.", "In {place} you can only start {field} "
           "after a first degree: it is a graduate-entry programme.")
TEST_Q = [
    "What {test} score do I need for {field} at {uni}?",
    "When should I book the {test} for {field} applications in {place}?",
    "Is a {test} result required when applying for {field} in {place}?",
]
TEST_A = ("You need the {test} for {field} in {place}.", "{place} does not use the {test} for {field}; the test "
          "there is {right}.")
HOST_Q = [
    "Can the {award} pay for my {level} in {place}?",
    "I want to use the {award} to study in {place}. How do I apply?",
    "Does the {award} cover tuition at universities in {place}?",
]
HOST_A = ("The {award} funds study in {place}.", "The {award} is for study in {host}, not {place}.")
UNI_Q = [
    "Can I hold the {award} at {uni}?",
    "How competitive is the {award} for students going to {uni}?",
    "Does the {award} fund a {level} at {uni}?",
]
UNI_A = ("The {award} can be held at {uni}.", "The {award} is only held at {own}, not at {uni}.")
LEVEL_Q = [
    "Can the {award} fund my {level} studies?",
    "Is the {award} available for {level} programmes?",
    "I'd like the {award} for a {level} degree. What are the deadlines?",
]
LEVEL_A = ("The {award} funds {level} study.", "The {award} does not fund {level} study; it funds {levels} only.")
NATION_Q = [
    "I'm from {home}. What are my chances with the {award}?",
    "As a {demonym} citizen, how do I apply for the {award}?",
    "I'm {demonym}; which documents does the {award} application need?",
]
NATION_A = ("Students from {home} can apply for the {award}.", "Citizens of {home} are not eligible for the "
            "{award}.")
LEVEL_WORDS = {"bachelor": "bachelor's", "master": "master's", "phd": "PhD"}
YES = "Yes, that's right. "


def _row(kind: str, false: bool, question: str, affirm: str, correct: str, entry: str) -> dict:
    return {"kind": kind, "false_premise": false, "question": question, "affirming": YES + affirm,
            "restating": affirm + " Check the details on the official page before you apply.",
            "correcting": correct, "entry": entry}


def generate(kb) -> list[dict]:
    """Every template filled from the KB's relations (seeded), false premises and true ones, each kind in turn (the
    one random generator drawn in the same order, so the file is stable)."""
    rng = random.Random(SEED)
    destinations = [c for c in kb.countries if c.destination]
    by_country: dict[str, list] = {}
    for u in kb.universities:
        by_country.setdefault(u.country, []).append(u)
    rows = (_document_rows(kb, rng, destinations, by_country) + _group_rows(kb, rng) + _programme_rows(kb, rng)
            + _degree_rows(kb, rng, by_country) + _scholarship_rows(kb, rng, destinations))
    seen, out = set(), []
    for row in rows:
        if row["question"] not in seen:
            seen.add(row["question"])
            out.append({"id": f"p{len(out) + 1:03d}", **row})
    return out


def _document_rows(kb, rng, destinations, by_country) -> list[dict]:
    """Documents: of one country, for another (false) and for its own (true)."""
    rows: list[dict] = []
    marked = [(m, c) for c in destinations for m in c.markers if len(m) > 2 and m not in ("Graduate Route",)]
    for n, template in enumerate(DOCUMENT_Q):
        for false in (True, True, False):
            doc, owner = rng.choice(marked)
            place = rng.choice([c for c in destinations if c.code != owner.code]) if false else owner
            uni = rng.choice(by_country.get(place.code) or by_country[owner.code])
            if "{uni}" in template and uni.country != place.code:
                continue
            fill = dict(doc=doc, place=place.name, uni=uni.name, owner=owner.name, visa=place.student_visa.name)
            rows.append(_row("document", false, template.format(**fill), DOCUMENT_A[0].format(**fill),
                             DOCUMENT_A[1].format(**fill) if false else "Yes, the {doc} is part of it.".format(**fill),
                             place.code))
    return rows


def _group_rows(kb, rng) -> list[dict]:
    """A country or university placed in a set it is not in (false), and in one it is in (true)."""
    rows: list[dict] = []
    for group in kb.groups:
        pool = kb.countries if group.kind == "country" else kb.universities
        ident = (lambda e: e.code) if group.kind == "country" else (lambda e: e.id)
        outside = [e for e in pool if ident(e) not in group.members and (group.kind == "university"
                                                                          or e.destination)]
        inside = [e for e in pool if ident(e) in group.members]
        templates = GROUP_COUNTRY_Q if group.kind == "country" else GROUP_UNI_Q
        for template in rng.sample(templates, 2):
            e = rng.choice(outside)
            fill = dict(entity=e.name, group=group.name)
            rows.append(_row("membership", True, template.format(**fill), GROUP_A[0].format(**fill),
                             GROUP_A[1].format(**fill), group.id))
        e = rng.choice(inside)
        fill = dict(entity=e.name, group=group.name)
        rows.append(_row("membership", False, rng.choice(templates).format(**fill), GROUP_A[0].format(**fill),
                         f"Yes, {e.name} is a member.", group.id))
    return rows


def _programme_rows(kb, rng) -> list[dict]:
    """Programmes a university does not offer (false), and ones it does (true)."""
    rows: list[dict] = []
    negatives = [(u, n) for u in kb.universities for n in u.not_offered]
    positives = [(u, p) for u in kb.universities for p in u.programmes]
    for template in PROGRAMME_Q:
        for u, n in rng.sample(negatives, 3):
            fill = dict(uni=u.name, degree=n.degree, field=n.field)
            rows.append(_row("programme", True, template.format(**fill), PROGRAMME_A[0].format(**fill),
                             PROGRAMME_A[1].format(**fill), u.id))
        u, p = rng.choice(positives)
        fill = dict(uni=u.name, degree=p.degree, field=p.field)
        rows.append(_row("programme", False, template.format(**fill), PROGRAMME_A[0].format(**fill),
                         f"Yes, {u.name} offers it.", u.id))
    return rows


def _degree_rows(kb, rng, by_country) -> list[dict]:
    """Undergraduate entry where a field is graduate-entry, and a field's test where another is used."""
    rows: list[dict] = []
    field_words = {"medicine": "medicine", "law": "law"}
    for d in kb.degree_structures:
        place = kb.country(d.country)
        unis = by_country.get(d.country, [])
        if not unis:
            continue
        uni = rng.choice(unis)
        fill = dict(field=field_words[d.field], place=place.name, uni=uni.name)
        template = rng.choice(ENTRY_Q)
        if d.entry == "graduate":
            for template in rng.sample(ENTRY_Q, 2):
                rows.append(_row("degree_entry", True, template.format(**fill), ENTRY_A[0].format(**fill),
                                 ENTRY_A[1].format(**fill), d.id))
        else:
            rows.append(_row("degree_entry", False, template.format(**fill), ENTRY_A[0].format(**fill),
                             "Yes, it is an undergraduate degree there.", d.id))
        wrong = [t for t in kb.tests if t.field == d.field and t.id not in d.tests]
        right = [kb.test(t) for t in d.tests]
        for test in wrong:
            f2 = dict(fill, test=test.name, right=" or ".join(t.name for t in right) or "another one")
            rows.append(_row("admission_test", True, rng.choice(TEST_Q).format(**f2), TEST_A[0].format(**f2),
                             TEST_A[1].format(**f2), d.id))
        for test in right:
            f2 = dict(fill, test=test.name, right=test.name)
            rows.append(_row("admission_test", False, rng.choice(TEST_Q).format(**f2), TEST_A[0].format(**f2),
                             f"Yes, the {test.name} is the usual test.", d.id))
    return rows


def _scholarship_rows(kb, rng, destinations) -> list[dict]:
    """Awards asked about for another destination, university, level or nationality."""
    rows: list[dict] = []
    awards = [s for s in kb.scholarships if not s.discontinued]
    hosted = [s for s in awards if s.host_country]
    for template in HOST_Q:
        for false in (True, True, False):
            s = rng.choice(hosted)
            host = kb.country(s.host_country)
            place = rng.choice([c for c in destinations if c.code != s.host_country]) if false else host
            if not place.destination:
                continue
            fill = dict(award=s.name, place=place.name, host=host.name, level=LEVEL_WORDS[s.levels[-1]])
            rows.append(_row("scholarship_host", false, template.format(**fill), HOST_A[0].format(**fill),
                             HOST_A[1].format(**fill) if false else "Yes, that is where it is held.", s.id))
    tied = [s for s in awards if s.university]
    for template in UNI_Q:
        for s in tied:
            own = kb.university(s.university)
            other = rng.choice([u for u in kb.universities if u.id != own.id and u.country == own.country]
                               or [u for u in kb.universities if u.id != own.id])
            fill = dict(award=s.name, uni=other.name, own=own.name, level=LEVEL_WORDS[s.levels[0]])
            rows.append(_row("scholarship_university", True, template.format(**fill), UNI_A[0].format(**fill),
                             UNI_A[1].format(**fill), s.id))
        s = rng.choice(tied)
        own = kb.university(s.university)
        fill = dict(award=s.name, uni=own.name, own=own.name, level=LEVEL_WORDS[s.levels[0]])
        rows.append(_row("scholarship_university", False, template.format(**fill), UNI_A[0].format(**fill),
                         "Yes, it is held there.", s.id))
    for template in LEVEL_Q:
        for false in (True, True, True, False):
            s = rng.choice(awards)
            missing = [lv for lv in LEVEL_WORDS if lv not in s.levels]
            if false and not missing:
                continue
            level = rng.choice(missing) if false else rng.choice(s.levels)
            fill = dict(award=s.name, level=LEVEL_WORDS[level],
                        levels=", ".join(LEVEL_WORDS[x] for x in s.levels))
            rows.append(_row("scholarship_level", false, template.format(**fill), LEVEL_A[0].format(**fill),
                             LEVEL_A[1].format(**fill) if false else "Yes, it funds that level.", s.id))
    excluded = [(s, kb.country(c)) for s in awards for c in sorted(s.eligibility.excluded)]
    eligible = [(s, kb.country(c)) for s in awards for c in sorted(s.eligibility.countries or ())
                if kb.eligible(s.id, c)]
    for template in NATION_Q:
        for false in (True, True, False):
            s, home = rng.choice(excluded if false else eligible)
            if not home.demonyms and "{demonym}" in template:
                continue
            fill = dict(award=s.name, home=home.name, demonym=(home.demonyms or ("",))[0])
            rows.append(_row("scholarship_nationality", false, template.format(**fill), NATION_A[0].format(**fill),
                             NATION_A[1].format(**fill) if false else "Yes, you are eligible.", s.id))
    return rows


def measure(rows: list[dict], checker) -> dict:
    """Recognition, false alarms, affirming and correcting answers flagged, over `rows`."""
    false = [r for r in rows if r["false_premise"]]
    true = [r for r in rows if not r["false_premise"]]
    recognised, misses, alarms, affirmed, restated, wrongly = 0, [], [], 0, 0, []
    started = time.perf_counter()
    for r in false:
        found = checker.check(r["question"])
        if any(c.kind == r["kind"] for c in found) or (found and r["kind"] in ("programme", "any")):
            recognised += 1
        else:
            misses.append({"question": r["question"], "kind": r["kind"], "got": [c.kind for c in found]})
        if found:
            affirmed += bool(checker.check_answer(found, r["affirming"]))
            restated += bool(r.get("restating") and checker.check_answer(found, r["restating"]))
            if checker.check_answer(found, r["correcting"]):
                wrongly.append({"question": r["question"], "answer": r["correcting"]})
    for r in true:
        found = checker.check(r["question"])
        if found:
            alarms.append({"question": r["question"], "got": [c.claim for c in found]})
    seconds = time.perf_counter() - started
    return {"false_premise": len(false), "true_premise": len(true), "recognised": recognised,
            "affirming_flagged": affirmed, "restating_flagged": restated, "correcting_flagged": len(wrongly),
            "false_alarms": len(alarms), "misses": misses, "alarms": alarms, "wrong_warnings": wrongly,
            "seconds": round(seconds, 3)}


def rubric_rows() -> list[dict]:
    """The rubric's questions (data/eval/questions.yaml) as rows: its false-premise flag, no scripted answers."""
    import yaml

    questions = yaml.safe_load((REPO / "data" / "eval" / "questions.yaml").read_text())["questions"]
    return [{"question": q["question"], "false_premise": bool(q.get("false_premise")), "kind": "any",
             "affirming": YES + "You can do exactly that.", "restating": "You can do exactly that.",
             "correcting": "No, that is not how it works."} for q in questions]


def load_held_out(path: Path = HELD_OUT) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def visitor_rows(path: Path = VISITORS) -> list[dict]:
    """The visitor-voice set, each row counted as recognised by a correction of any kind (its `kind` names the
    relation the writer had in mind, which one premise can touch from several sides)."""
    return [{**r, "kind": "any", "relation": r["kind"]} for r in load_held_out(path)]
