"""Loading the knowledge base: `load_kb(path)` reads every `data/kb/*.yaml`, validates it and returns a frozen
`trainer.kb.knowledge_base.KnowledgeBase`.

Files are read and their keys checked through `trainer.typed_yaml`, so a mistake fails like one in any other
settings file: one `KBError` line, `<file>: <section>[<index>] (<id>).<key>: <rule>`, with a did-you-mean for an
unknown key. On top of the shapes, the KB's own rules: every fact has an official http(s) `source` and an `as_of`
date, ids and country codes are well formed and unique, references name countries the KB has, regexes compile,
each rule flags its own false examples and spares its corrected ones (through `Rule.in_sentence`, as the audit
matches them), and no two entities share a name (a country's markers included).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import re
from pathlib import Path
from typing import Any, Iterator, Sequence

from trainer import REPO_ROOT
from trainer.kb.schema import (AdmissionTest, ApplicationSystem, Country, DegreeStructure, Eligibility, Group,
                               KBError, Rule, Scholarship, University, WorkLimit, degree_family, field_key)
from trainer.kb.knowledge_base import KnowledgeBase
from trainer.kb.names import name_tokens
from trainer.kb.consistency import check_names, check_premise_examples, check_references
from trainer.kb.mentions import Named
from trainer.kb.relations import Relation, RelationSpec, compile_relation
from trainer.typed_yaml import ConfigError, build, check_keys, convert, item_where, read_yaml, suggest

LEVELS = ("bachelor", "master", "phd")
REGIONS = ("africa", "americas", "asia", "europe", "oceania")
GROUPS = ("all", "commonwealth", "non_commonwealth", "eea", "non_eea") + REGIONS
"""Named country groups an eligibility list may use; the loader expands them to the KB's own countries."""
SECTIONS = ("version", "countries", "universities", "scholarships", "tests", "rules", "groups", "degree_structures",
            "work_limits", "systems", "relations", "vocabulary")
FIELDS = ("medicine", "law")
"""Fields whose degree structure and admission tests the KB describes per country."""
ENTRIES = ("undergraduate", "graduate", "both")

AS_OF = re.compile(r"^\d{4}-(0[1-9]|1[0-2])(-\d{2})?$")
URL = re.compile(r"^https?://[^\s/$.?#][^\s]*$")
ID = re.compile(r"^[a-z0-9][a-z0-9-]*$")
CODE = re.compile(r"^[A-Z]{2}$")

SHIPPED_KB = REPO_ROOT / "data" / "kb"
"""The knowledge base shipped with the tool, found from the package, not from the working directory."""

_CACHE: dict[tuple[str, tuple[tuple[str, float], ...]], KnowledgeBase] = {}



def resolve_kb_folder(path: str | Path) -> Path:
    """A KB folder named in a settings file, as given, else relative to the tool's own folder, so the default
    `data/kb` works from any working directory; a folder found in neither place is a KBError naming it."""
    given = Path(path)
    if given.is_dir():
        return given
    packaged = REPO_ROOT / given
    if str(path).strip() and not given.is_absolute() and packaged.is_dir():
        return packaged
    raise KBError(f"{path or repr(path)}: knowledge base folder not found")


def load_kb(path: str | Path = SHIPPED_KB) -> KnowledgeBase:
    """Read and validate every `*.yaml` in the KB folder; cached until a file changes."""
    folder = Path(path)
    if not folder.is_dir():
        raise KBError(f"{folder}: knowledge base folder not found")
    files = sorted(folder.glob("*.yaml"))
    if not files:
        raise KBError(f"{folder}: no .yaml files in the knowledge base folder")
    # The folder as given is part of the key: the KB reports it (`kb.path`), so `data/kb` and its absolute spelling
    # must not share an entry.
    key = (str(folder), str(folder.resolve()), tuple((f.name, f.stat().st_mtime) for f in files))
    if key not in _CACHE:
        _CACHE.clear()  # one KB at a time is plenty; old versions only waste memory
        _CACHE[key] = _Loader(folder, files).build()
    return _CACHE[key]


@contextlib.contextmanager
def _in_file(file: Path) -> Iterator[None]:
    """Put the file in front of a KBError raised inside, so every message reads `<file>: <key>: <rule>`."""
    try:
        yield
    except KBError as exc:
        raise KBError(f"{file}: {exc}") from None


class _Loader:
    def __init__(self, folder: Path, files: Sequence[Path]):
        self.folder = folder
        self.sections: dict[str, list[tuple[Path, int, Any]]] = {s: [] for s in SECTIONS
                                                                if s not in ("version", "vocabulary")}
        self.version: tuple[Path, Any] | None = None
        self.vocabulary: tuple[Path, Any] | None = None
        self.wheres: dict[str, dict[str, str]] = {}
        for file in files:
            raw = read_yaml(file, what="knowledge base file", error=KBError, mapping=False)
            if raw is None:
                continue
            with _in_file(file):
                check_keys(raw, "", optional=SECTIONS, error=KBError)
                for section, value in raw.items():
                    if section in ("version", "vocabulary"):
                        if getattr(self, section) is not None:
                            raise KBError(f"{section}: already given in {getattr(self, section)[0]}")
                        setattr(self, section, (file, value))
                        continue
                    self.sections[section].extend((file, i, item) for i, item in enumerate(_list(value, section)))

    def build(self) -> KnowledgeBase:
        version = self._version()
        countries = self._all("countries", self._country, key="code")
        self.codes = {c.code: c for c in countries}
        kb = KnowledgeBase(
            version=version,
            countries=countries,
            universities=self._all("universities", self._university),
            scholarships=self._all("scholarships", self._scholarship),
            tests=self._all("tests", self._test),
            rules=self._all("rules", self._rule),
            path=str(self.folder),
            groups=self._all("groups", self._group_entry),
            degree_structures=self._all("degree_structures", self._degree_structure),
            work_limits=self._all("work_limits", self._work_limit, key="country"),
            systems=self._all("systems", self._system),
            vocabulary=self._vocabulary(),
            relations=self._all("relations", self._relation),
        )
        check_names(kb, self.wheres)
        check_references(kb, self.wheres)
        check_premise_examples(kb, self.wheres)
        combined = "|".join(f"(?:{r.trigger.pattern})" for r in kb.rules if r.trigger is not None)
        try:  # the audit joins every trigger into one regex: named groups or backreferences would break it
            re.compile(combined, re.IGNORECASE)
        except re.error as exc:
            raise KBError(f"{self.folder}: rules: the triggers do not combine into one regex ({exc}); avoid inline "
                          "global flags such as (?i), named groups and backreferences") from None
        return kb

    # Generic helpers

    def _all(self, section: str, build, key: str = "id") -> tuple:
        seen = self.wheres.setdefault(section, {})
        out = []
        for file, index, raw in self.sections[section]:
            where = item_where(section, index, raw, key)
            with _in_file(file):
                entity = build(raw, where)  # each builder checks the entry's keys first
                ident = getattr(entity, key)
                if ident in seen:
                    raise KBError(f"{where}.{key}: {ident!r} is used twice (first at {seen[ident]})")
            seen[ident] = f"{file}: {where}"
            out.append(entity)
        return tuple(out)

    def _version(self) -> dict[str, str]:
        if self.version is None:
            raise KBError(f"{self.folder}: no `version` block (version, as_of) in any file")
        file, raw = self.version
        with _in_file(file):
            check_keys(raw, "version", required=("version", "as_of"), optional=("author", "note", "license"),
                       error=KBError)
            out = {str(k): _text(v, f"version.{k}") for k, v in raw.items()}
            _as_of(out["as_of"], "version.as_of")
        return out

    # Entities

    def _country(self, raw: dict, where: str) -> Country:
        if isinstance(raw, dict) and "code" in raw:
            _text(raw["code"], f"{where}.code")  # the Norway problem: an unquoted NO reads as false
        country = self._entity(Country, raw, where)
        if not CODE.match(country.code):
            raise KBError(f"{where}.code: {country.code!r} is not an ISO 3166-1 alpha-2 code (two capital letters)")
        if country.region not in REGIONS:
            raise KBError(f"{where}.region: {country.region!r} is not one of {', '.join(REGIONS)}")
        if country.destination and country.student_visa is None:
            raise KBError(f"{where}.student_visa: required for a destination (destination: true)")
        if country.student_visa is not None and not country.student_visa.name:
            raise KBError(f"{where}.student_visa.name: required key is missing")
        for key in ("visa_portal", "study_portal"):
            if getattr(country, key) is not None:
                _url(getattr(country, key), f"{where}.{key}")
        return country

    def _university(self, raw: dict, where: str) -> University:
        university = self._entity(University, raw, where)
        for i, n in enumerate(university.not_offered):
            if any(degree_family(p.degree, p.field) == degree_family(n.degree, n.field)
                   and field_key(p.field) == field_key(n.field) for p in university.programmes):
                raise KBError(f"{where}.not_offered[{i}]: {n.degree} in {n.field} is also listed in programmes")
        return university

    def _scholarship(self, raw: dict, where: str) -> Scholarship:
        check_keys(raw, where, required=("id", "name", "host_country", "levels", "about", "eligibility", "source",
                                         "as_of"), optional=("aliases", "discontinued", "university"), error=KBError)
        host = _text(raw["host_country"], f"{where}.host_country")
        levels = _texts(raw["levels"], f"{where}.levels")
        for i, level in enumerate(levels):
            if level not in LEVELS:
                raise KBError(f"{where}.levels[{i}]: {level!r} is not one of {', '.join(LEVELS)}")
        return Scholarship(
            id=self._id(raw, where), name=_text(raw["name"], f"{where}.name"),
            aliases=_texts(raw.get("aliases", []), f"{where}.aliases"),
            host_country=None if host == "any" else self._code(host, f"{where}.host_country"), levels=levels,
            about=_text(raw["about"], f"{where}.about"),
            eligibility=self._eligibility(raw["eligibility"], f"{where}.eligibility"),
            discontinued=_bool(raw.get("discontinued", False), f"{where}.discontinued"),
            source=_url(raw["source"], f"{where}.source"), as_of=_as_of(raw["as_of"], f"{where}.as_of"),
            university=_text(raw["university"], f"{where}.university") if raw.get("university") else None,
        )

    def _eligibility(self, raw: Any, at: str) -> Eligibility:
        check_keys(raw, at, required=("text", "countries"), optional=("excluded", "undecided"), error=KBError)
        lists: dict[str, list[str] | None] = {}
        for name in ("countries", "excluded", "undecided"):
            value = raw.get(name, [])
            if name == "countries" and value is None:
                lists[name] = None
                continue
            lists[name] = [self._code_or_group(c, f"{at}.{name}[{i}]")
                           for i, c in enumerate(_texts(value, f"{at}.{name}"))]
        explicit: dict[str, str] = {}
        for name, entries in lists.items():
            for entry in entries or ():
                if entry in self.codes:
                    if entry in explicit:
                        raise KBError(f"{at}.{name}: {entry} is also listed in {explicit[entry]}")
                    explicit[entry] = name
        # An explicit code beats a group; among groups, excluded beats countries beats undecided.
        verdict: dict[str, str] = dict(explicit)
        for name in ("excluded", "countries", "undecided"):
            for entry in lists[name] or ():
                if entry not in self.codes:
                    for code in self._group(entry):
                        verdict.setdefault(code, name)
        return Eligibility(
            text=_text(raw["text"], f"{at}.text"),
            countries=None if lists["countries"] is None else
            frozenset(c for c, v in verdict.items() if v == "countries"),
            excluded=frozenset(c for c, v in verdict.items() if v == "excluded"),
            undecided=frozenset(c for c, v in verdict.items() if v == "undecided"),
        )

    def _test(self, raw: dict, where: str) -> AdmissionTest:
        test = self._entity(AdmissionTest, raw, where)
        if test.kind not in ("language", "aptitude"):
            raise KBError(f"{where}.kind: {test.kind!r} is not language or aptitude")
        if test.field is not None and test.field not in FIELDS:
            raise KBError(f"{where}.field: {test.field!r} is not one of {', '.join(FIELDS)}")
        return test

    def _premise_examples(self, raw: Any, at: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """`examples: {flag: [questions the premise check must correct], pass: [questions it must not]}`."""
        check_keys(raw, at, required=("flag",), optional=("pass",), error=KBError)
        flag, passing = _texts(raw["flag"], f"{at}.flag"), _texts(raw.get("pass", []), f"{at}.pass")
        if not flag:
            raise KBError(f"{at}.flag: give at least one question whose premise this entry corrects")
        return flag, passing

    def _group_entry(self, raw: dict, where: str) -> Group:
        group = self._entity(Group, raw, where)
        if group.kind not in ("country", "university"):
            raise KBError(f"{where}.kind: {group.kind!r} is not country or university")
        if group.kind == "country":
            for i, member in enumerate(sorted(group.members)):
                self._code(member, f"{where}.members[{i}]")
        return group

    def _work_limit(self, raw: dict, where: str) -> WorkLimit:
        limit = self._entity(WorkLimit, raw, where)
        if self.codes[limit.country].work_rights is None:
            raise KBError(f"{where}.country: {limit.country} has no work_rights fact in countries to correct with")
        if limit.hours_per_week is not None and not 0 < limit.hours_per_week < 60:
            raise KBError(f"{where}.hours_per_week: {limit.hours_per_week!r} is not a whole number of hours (1-59) "
                          "or null")
        return limit

    def _degree_structure(self, raw: dict, where: str) -> DegreeStructure:
        structure = self._entity(DegreeStructure, raw, where)
        if structure.field not in FIELDS:
            raise KBError(f"{where}.field: {structure.field!r} is not one of {', '.join(FIELDS)}")
        if structure.entry not in ENTRIES:
            raise KBError(f"{where}.entry: {structure.entry!r} is not one of {', '.join(ENTRIES)}")
        return structure

    def _rule(self, raw: dict, where: str) -> Rule:
        check_keys(raw, where, required=("id", "topic", "country", "keywords", "claim", "fact", "source", "as_of",
                                         "examples"), optional=("trigger", "terms", "unless"), error=KBError)
        keywords = _texts(raw["keywords"], f"{where}.keywords")
        for i, keyword in enumerate(keywords):
            if len(name_tokens(keyword)) != 1:
                raise KBError(f"{where}.keywords[{i}]: {keyword!r} must be one word (letters and digits only)")
        if ("trigger" in raw) == ("terms" in raw):
            raise KBError(f"{where}: give either `trigger` (one regex) or `terms` (regexes that must all occur in a "
                          "sentence), not both or neither")
        trigger = _regex(raw["trigger"], f"{where}.trigger") if "trigger" in raw else None
        terms = tuple(_regex(t, f"{where}.terms[{i}]") for i, t in enumerate(_texts(raw.get("terms", []),
                                                                                    f"{where}.terms")))
        if "terms" in raw and not terms:
            raise KBError(f"{where}.terms: give at least one regex")
        unless = _regex(raw["unless"], f"{where}.unless") if raw.get("unless") else None
        at = f"{where}.examples"
        examples = raw["examples"]
        if isinstance(examples, dict):
            examples = {"false" if k is False else k: v for k, v in examples.items()}  # YAML reads `false:` as False
        check_keys(examples, at, required=("false",), optional=("corrected",), error=KBError)
        false = _texts(examples["false"], f"{at}.false")
        corrected = _texts(examples.get("corrected", []), f"{at}.corrected")
        if not false:
            raise KBError(f"{at}.false: give at least one sentence stating the false claim")
        if unless is not None and not corrected:
            raise KBError(f"{at}.corrected: a rule with `unless` needs at least one corrected sentence")
        country = raw["country"]
        rule = Rule(
            id=self._id(raw, where), topic=_text(raw["topic"], f"{where}.topic"),
            country=None if country is None else self._code(country, f"{where}.country"), trigger=trigger,
            unless=unless, claim=_text(raw["claim"], f"{where}.claim"), fact=_text(raw["fact"], f"{where}.fact"),
            source=_url(raw["source"], f"{where}.source"), as_of=_as_of(raw["as_of"], f"{where}.as_of"),
            keywords=keywords, examples_false=false, examples_corrected=corrected, terms=terms,
        )
        gate = {k.lower().encode("utf-8") for k in keywords}
        matched = "the trigger does not match" if trigger is not None else "not every term occurs in"
        for sentence in false:
            if not gate & set(name_tokens(sentence)):
                raise KBError(f"{at}.false: none of the keywords ({', '.join(keywords)}) is in {sentence!r}")
            if rule.claim_spans(sentence) is None:
                raise KBError(f"{at}.false: {matched} {sentence!r}")
            if not rule.in_sentence(sentence):
                raise KBError(f"{at}.false: `unless` or a negation excuses the false sentence {sentence!r}")
        for sentence in corrected:
            if rule.in_sentence(sentence):
                raise KBError(f"{at}.corrected: the rule would flag the corrected sentence {sentence!r}")
        return rule

    def _levels(self, value: Any, where: str) -> tuple[str, ...]:
        levels = _texts(value, where)
        for i, level in enumerate(levels):
            if level not in LEVELS:
                raise KBError(f"{where}[{i}]: {level!r} is not one of {', '.join(LEVELS)}")
        return levels

    def _typed(self, cls: type, raw: Any, where: str) -> Any:
        """`cls` built from the entry by its one declaration (`typed_yaml.build`), errors as KBErrors."""
        try:
            return build(cls, raw, where, source_field=True)
        except ConfigError as exc:
            raise KBError(str(exc)) from None

    def _system(self, raw: dict, where: str) -> ApplicationSystem:
        return self._entity(ApplicationSystem, raw, where)

    def _entity(self, cls: type, raw: Any, where: str) -> Any:
        """An entity built from its one declaration (`typed_yaml.build`), then the KB's rules on its fields by name:
        `id` well formed, `source` an http(s) URL, `as_of` a date, `country`/`countries` codes the KB has, `levels`
        known levels, `examples` flag (at least one) and pass questions, and no empty text."""
        entity = self._typed(cls, _dates_as_text(raw), where)
        self._check_fields(entity, where)
        return entity

    def _check_fields(self, entity: Any, where: str) -> None:
        for f in dataclasses.fields(entity):
            value, at = getattr(entity, f.name), f"{where}.{f.name}"
            if dataclasses.is_dataclass(value):  # a nested fact (a country's `work_rights`)
                self._check_fields(value, at)
            elif isinstance(value, tuple) and value and dataclasses.is_dataclass(value[0]):
                for i, item in enumerate(value):
                    self._check_fields(item, f"{at}[{i}]")
            if f.name == "id" and not ID.match(value):
                raise KBError(f"{at}: {value!r} must be lowercase letters, digits and hyphens")
            if f.name == "source":
                _url(value, at)
            elif f.name == "as_of":
                _as_of(value, at)
            elif f.name == "country" and value is not None:
                self._code(value, at)
            elif f.name == "countries":
                for i, code in enumerate(value):
                    self._code(code, f"{at}[{i}]")
            elif f.name == "levels":
                self._levels(list(value), at)
            elif f.name == "examples":
                self._premise_examples({k: list(v) for k, v in value.items()}, at)
            elif isinstance(value, str) and not value.strip():
                raise KBError(f"{at}: must be non-empty text")

    def _vocabulary(self) -> dict[str, tuple[Named, ...]]:
        """The words of levels and fields (relations.yaml `vocabulary`), each entry a `Named`."""
        if self.vocabulary is None:
            return {}
        file, raw = self.vocabulary
        allowed = {"level": LEVELS, "field": FIELDS}
        with _in_file(file):
            check_keys(raw, "vocabulary", optional=tuple(allowed), error=KBError)
            out = {}
            for kind, entries in raw.items():
                named = tuple(self._typed(Named, e, item_where(f"vocabulary.{kind}", i, e, "id"))
                              for i, e in enumerate(_list(entries, f"vocabulary.{kind}")))
                for i, n in enumerate(named):
                    if n.id not in allowed[kind]:
                        raise KBError(f"vocabulary.{kind}[{i}].id: {n.id!r} is not one of {', '.join(allowed[kind])}")
                out[kind] = named
        return out

    def _relation(self, raw: dict, where: str) -> Relation:
        import trainer.kb.relation_checks  # noqa: F401  (registers the checks relations name)

        return compile_relation(self._typed(RelationSpec, raw, where), where, set(self.codes))

    # References

    def _id(self, raw: dict, where: str) -> str:
        ident = _text(raw["id"], f"{where}.id")
        if not ID.match(ident):
            raise KBError(f"{where}.id: {ident!r} must be lowercase letters, digits and hyphens")
        return ident

    def _code(self, value: Any, where: str) -> str:
        code = _text(value, where)
        if code not in self.codes:
            raise KBError(f"{where}: {code!r} is not a country in the knowledge base{suggest(code, self.codes)}")
        return code

    def _code_or_group(self, value: str, where: str) -> str:
        if value in self.codes or value in GROUPS:
            return value
        raise KBError(f"{where}: {value!r} is neither a country code in the knowledge base nor a group "
                      f"({', '.join(GROUPS)})")

    def _group(self, group: str) -> list[str]:
        tests = {
            "all": lambda c: True,
            "commonwealth": lambda c: c.commonwealth_member,
            "non_commonwealth": lambda c: not c.commonwealth_member,
            "eea": lambda c: c.eea_member,
            "non_eea": lambda c: not c.eea_member,
        }
        test = tests.get(group, lambda c: c.region == group)
        return [code for code, c in self.codes.items() if test(c)]

# Values: each error names the dotted key it is about.

def _dates_as_text(raw: Any) -> Any:
    """YAML reads an unquoted 2026-11-01 as a date: every `as_of` back to text, at any depth."""
    if isinstance(raw, dict):
        return {k: v.isoformat() if k == "as_of" and isinstance(v, datetime.date) else _dates_as_text(v)
                for k, v in raw.items()}
    if isinstance(raw, list):
        return [_dates_as_text(v) for v in raw]
    return raw


def _text(value: Any, where: str) -> str:
    if isinstance(value, bool):  # the Norway problem: YAML reads an unquoted NO (or yes, on, off) as a boolean
        raise KBError(f"{where}: expected text, got {value!r}; quote it (\"NO\") so YAML does not read a boolean")
    text = convert(value, str, where, KBError).strip()
    if not text:
        raise KBError(f"{where}: must be non-empty text")
    return text


def _texts(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    return tuple(_text(v, f"{where}[{i}]") for i, v in enumerate(_list(value, where)))


def _list(value: Any, where: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise KBError(f"{where}: expected a list, got {value!r}")
    return value


def _bool(value: Any, where: str) -> bool:
    return convert(value, bool, where, KBError)


def _url(value: Any, where: str) -> str:
    if value is None or value == "":
        raise KBError(f"{where}: is empty; every fact needs the official http(s) page it was checked against")
    if not isinstance(value, str) or not URL.match(value):
        raise KBError(f"{where}: {value!r} is not an http(s) URL")
    return value


def _as_of(value: Any, where: str) -> str:
    if value is None or value == "":
        raise KBError(f"{where}: is empty; every fact needs the date (YYYY-MM or YYYY-MM-DD) it was checked")
    if isinstance(value, datetime.date):  # YAML reads an unquoted 2026-11-01 as a date
        value = value.isoformat()
    text = str(value)
    if not AS_OF.match(text):
        raise KBError(f"{where}: {value!r} is not a YYYY-MM or YYYY-MM-DD date")
    if len(text) == 10:
        try:
            datetime.date.fromisoformat(text)
        except ValueError:
            raise KBError(f"{where}: {value!r} is not a real date") from None
    return text


def _regex(value: Any, where: str) -> re.Pattern:
    text = _text(value, where)
    try:
        return re.compile(text, re.IGNORECASE)
    except re.error as exc:
        raise KBError(f"{where}: not a valid regex: {exc}") from None
