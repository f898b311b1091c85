"""The knowledge base's checks across entries, run by the loader once every file is read: names map to one entity,
references name entries the KB has, and every group, degree structure, work limit and relation corrects its own
`flag` questions and lets its `pass` ones through, so an entry cannot silently stop working. `wheres` maps each
section's ids to `<file>: <section>[<index>] (<id>)`, so each error names the file, the entry and the rule."""

from __future__ import annotations

from trainer.kb.knowledge_base import KnowledgeBase
from trainer.kb.names import case_sensitive, name_tokens, normalise_name
from trainer.kb.schema import KBError
from trainer.typed_yaml import suggest


def check_references(kb: KnowledgeBase, wheres: dict[str, dict[str, str]]) -> None:
    """Ids that point at other entries name entries the KB has; group flags the countries carry agree."""
    universities = {u.id for u in kb.universities}
    tests = {t.id: t for t in kb.tests}
    where = {s: wheres.get(s, {}) for s in ("groups", "degree_structures", "scholarships")}
    for s in kb.scholarships:
        if s.university is not None and s.university not in universities:
            raise KBError(f"{where['scholarships'][s.id]}.university: {s.university!r} is not a university in "
                          f"the knowledge base{suggest(s.university, universities)}")
    flags = {"commonwealth": "commonwealth_member", "eea": "eea_member"}
    for g in kb.groups:
        if g.kind == "university":
            for m in sorted(g.members - universities):
                raise KBError(f"{where['groups'][g.id]}.members: {m!r} is not a university in the knowledge "
                              f"base{suggest(m, universities)}")
        if g.id in flags:
            flagged = {c.code for c in kb.countries if getattr(c, flags[g.id])}
            if flagged != set(g.members):
                raise KBError(f"{where['groups'][g.id]}.members: differs from the countries' {flags[g.id]} "
                              f"(only in members: {sorted(g.members - flagged)}, only flagged: "
                              f"{sorted(flagged - g.members)})")
    for system in kb.systems:
        for u in system.universities:
            if u not in universities:
                raise KBError(f"{wheres['systems'][system.id]}.universities: {u!r} is not a university in the "
                              f"knowledge base{suggest(u, universities)}")
    for d in kb.degree_structures:
        for t in d.tests:
            if t not in tests:
                raise KBError(f"{where['degree_structures'][d.id]}.tests: {t!r} is not an admission test in the "
                              f"knowledge base{suggest(t, tests)}")
            if tests[t].field != d.field:
                raise KBError(f"{where['degree_structures'][d.id]}.tests: {t!r} is not a {d.field} test "
                              f"(its `field` is {tests[t].field})")

def check_premise_examples(kb: KnowledgeBase, wheres: dict[str, dict[str, str]]) -> None:
    """Each group and degree structure corrects its own `flag` questions and lets its `pass` ones through, as
    the premise check (`trainer.kb.premise`) reads them, so an entry cannot silently stop working."""
    from trainer.kb.premise import PremiseChecker

    checker = PremiseChecker(kb)
    for section, entries in (("groups", kb.groups), ("degree_structures", kb.degree_structures),
                             ("work_limits", kb.work_limits)):
        for entry in entries:
            ident = entry.country if section == "work_limits" else entry.id
            at = f"{wheres[section][ident]}.examples"
            for question in entry.examples_flag:
                if not any(c.entry == entry.id for c in checker.every_correction(question)):
                    raise KBError(f"{at}.flag: the premise check does not correct {question!r}")
            for question in entry.examples_pass:
                if any(c.entry == entry.id for c in checker.every_correction(question)):
                    raise KBError(f"{at}.pass: the premise check would correct {question!r}")
    for relation in kb.relations:
        at = f"{wheres['relations'][relation.spec.id]}.examples"
        for question in relation.spec.examples.get("flag", ()):
            if not any(c.kind == relation.kind for c in checker.every_correction(question)):
                raise KBError(f"{at}.flag: the premise check does not correct {question!r}")
        for question in relation.spec.examples.get("pass", ()):
            found = [c for c in checker.every_correction(question) if c.kind == relation.kind]
            if found:
                raise KBError(f"{at}.pass: the premise check would correct {question!r} ({found[0].claim})")

def check_names(kb: KnowledgeBase, wheres: dict[str, dict[str, str]]) -> None:
    """Two entities of one kind may not share a name or alias: a mention must map to one of them."""
    for section, entities, fields in (
        ("countries", kb.countries, ("name", "aliases", "demonyms", "markers")),
        ("universities", kb.universities, ("name", "aliases")),
        ("scholarships", kb.scholarships, ("name", "aliases")),
        ("tests", kb.tests, ("name", "aliases")),
        ("systems", kb.systems, ("name", "aliases")),
    ):
        owner: dict[str, str] = {}
        for entity in entities:
            ident = getattr(entity, "id", None) or entity.code
            for f in fields:
                value = getattr(entity, f)
                for name in (value,) if isinstance(value, str) else value:
                    tokens = name_tokens(name)
                    if not tokens:
                        raise KBError(f"{wheres[section][ident]}.{f}: {name!r} has no letters or digits")
                    # names match by their word tokens, so "U.S." and "U S" are the same name
                    key = normalise_name(name) if case_sensitive(name) else b" ".join(tokens).decode()
                    if owner.get(key, ident) != ident:
                        raise KBError(f"{wheres[section][ident]}.{f}: {name!r} already names "
                                      f"{owner[key]}")
                    owner[key] = ident
