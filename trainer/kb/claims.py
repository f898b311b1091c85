"""What the audit and the premise check look for in an answer besides rules: flags (`Flag`, `FAIL`, `VERIFY`), numbers
beside an attribute the KB knows (work hours, fees, scores, lengths), named awards and other named things the KB may
not hold, and programme names."""

from __future__ import annotations

import re
from dataclasses import dataclass

FAIL, VERIFY = "fail", "verify"


# A named award is one to five capitalised words before "Scholarship", "Fellowship", ...: found in two steps, the
# award word first, then the words just before it (one pattern tried at every position cost a third of the audit).
AWARD_WORD = re.compile(r"(?:Scholarships?|Fellowships?|Awards?|Grants?|Bursary|Bursaries)\b")
"""No leading \\b: `re` can then skip ahead by the first letter; AWARD_NAME_BEFORE needs a space before it anyway."""
AWARD_NAME_BEFORE = re.compile(r"\b(?:[A-Z][\w'’&.-]*\s){1,5}$")
AWARD_TOKENS = frozenset(w.encode() for w in "scholarship scholarships fellowship fellowships award awards grant "
                                                "grants bursary bursaries".split())
"""An award word AWARD_NAME_BEFORE can name is preceded by whitespace, so on ASCII text it is one of these words."""
AWARD_STOPWORDS = {"the", "a", "an", "merit", "international", "university", "government", "partial", "full",
                   "research", "need-based", "these", "such", "other", "many", "some", "external", "internal",
                   "country-specific", "departmental", "most", "all", "apply", "various", "specific", "graduate",
                   "undergraduate", "postgraduate", "master's", "doctoral", "phd", "travel", "teaching", "study"}
# A named app, portal, agency, survey or programme: capitalised words before one of these words, as for awards.
NAME_TOKENS = frozenset(w.encode() for w in "app apps portal platform agency survey programme programmes program "
                                             "programs initiative network council consultancy consultants hub "
                                             "database index".split())
"""The last word of a name, capitalised; the name ends at it ("Cultural Fit and Program Values" names nothing)."""
LOWER_CASE_NAME_WORDS = frozenset({b"app", b"portal", b"platform"})
"""Last words that may follow a name in lower case ("the UniMatch app")."""
GENERIC_NAME_WORDS = {
    "mba", "emba", "ms", "msc", "ma", "mphil", "phd", "master's", "masters", "master", "bachelor's", "bachelors",
    "bachelor", "undergraduate", "graduate", "postgraduate", "doctoral", "degree", "exchange", "student", "students",
    "study", "international", "university", "college", "school", "business", "academic", "research", "summer",
    "winter", "data", "science", "computer", "engineering", "honours", "honors", "dual", "joint", "executive",
    "full-time", "part-time", "online", "mobile", "official", "work-study", "co-op", "buddy", "mentorship",
    "mentoring", "orientation", "ambassador", "peer", "internship", "placement", "application", "applications",
    "alumni", "career", "careers", "language", "english", "foundation", "pathway", "preparatory", "bridging",
    "writing", "tutoring", "counselling", "counseling", "wellbeing", "support", "accommodation", "housing", "the",
    "a", "an", "your", "our", "this", "that", "its", "their", "my", "new", "and", "of", "for", "in", "&", "section",
    "fit", "with", "eligible", "policy", "public"}
"""Words that describe rather than name ("the Oxford MBA Program", "your university's Buddy Program"): a name made
only of these and KB names is no invented name."""
NAME_LEAD_WORDS = {"the", "a", "an", "your", "our", "this", "that", "its", "their", "my", "contact", "use", "try",
                   "join", "visit", "check", "download", "install", "apply", "see", "consider", "explore", "register",
                   "ask", "email", "call", "through", "via"}
"""Words before a name that are not part of it: articles, and verbs capitalised at the start of a sentence ("Contact
XYZ Agency")."""
KNOWN_BODIES = (
    "british council", "ucas", "common app", "common application", "coalition app", "campus france", "daad",
    "educationusa", "idp", "nhs", "national health service", "gmac", "graduate management admission council",
    "council of graduate schools", "sevis", "sevp", "student and exchange visitor", "ircc", "immiaccount",
    "uni-assist", "studielink", "nuffic", "jasso", "erasmus", "fulbright", "express entry", "provincial nominee",
    "student direct stream", "national student survey", "ets", "college board", "vfs global", "tlscontact",
    "applyboard", "studyportals", "mastersportal", "education new zealand", "quacquarelli symonds", "qs",
    "times higher education", "u.s. news", "us news", "linkedin", "handshake", "coursera", "edx", "duolingo",
    "pearson", "khan academy", "glassdoor", "indeed", "federal work-study", "ielts", "toefl", "gre", "gmat",
    "international experience canada", "working holiday", "global talent", "h-1b", "eures", "euraxess",
    "study in germany", "make it in germany", "chevening", "commonwealth", "marshall", "rhodes",
    # named in the KB-checked seed dialogues (data/seed/)
    "dental council", "bar council", "immigration services agency", "canada revenue agency", "swedish tax agency",
    "migration agency", "federal employment agency", "third level graduate programme", "post-graduation work permit",
    "community volunteer income tax program", "u.s. student program")
"""Real, well-known bodies, apps and schemes an answer may name though the KB has no entry for them."""
NEXT_CAPITAL = re.compile(r" [A-Z]")
KNOWN_BODY = re.compile(rf"(?<![\w.-])(?:{'|'.join(map(re.escape, KNOWN_BODIES))})(?![\w-])")


@dataclass(frozen=True)
class Flag:
    """One finding on one conversation."""

    rule: str
    severity: str
    detail: str
    message: int | None = None
    """Index of the message in the conversation (0-based); reports and audit.jsonl number messages from 1, as
    ingestion's messages do."""
    source: str | None = None
    """The official page of the KB fact a KB flag rests on."""

    def __str__(self) -> str:
        where = f" (message {self.message + 1})" if self.message is not None else ""
        return f"{self.severity}:{self.rule}{where}: {self.detail}"


_MID_LINE_BREAK = re.compile(r"[.!?]\s+")


def sentence_at(text: str, at: int) -> tuple[int, int]:
    """The span of the sentence (as SENTENCE splits `text`, give or take leading spaces) that holds position `at`,
    found within its line: splitting every answer into sentences cost more than all the numbers' checks together."""
    start = text.rfind("\n", 0, at) + 1
    line_end = text.find("\n", at)
    line_end = len(text) if line_end < 0 else line_end
    for match in _MID_LINE_BREAK.finditer(text, start, at):
        start = match.end()
    match = _MID_LINE_BREAK.search(text, at, line_end)
    return start, match.start() + 1 if match else line_end


def entity_key(entity) -> tuple[str, str]:
    return type(entity).__name__, getattr(entity, "id", None) or entity.code


def entities_by_number(kb) -> dict[tuple[str, str], frozenset[tuple[str, str]]]:
    """Each figure in the KB, as `numbers_at` reads it -> the `entity_key`s of the entities whose facts carry it (a
    country's facts include its rules'; a rule about no country counts for the entities its fact names). A rule's
    fact verifies none of the figures its false claim states ("40 hours per fortnight was the earlier rule")."""
    out: dict[tuple[str, str], set[tuple[str, str]]] = {}
    claimed = {rule.fact: _numbers_in(rule.claim) for rule in kb.rules}
    groups = [("countries", c) for c in kb.countries] + [("universities", u) for u in kb.universities] + \
        [("scholarships", s) for s in kb.scholarships] + [("tests", t) for t in kb.tests]
    for kind, entity in groups:
        for fact in kb.facts_for(**{kind: [entity]}):
            for number in _numbers_in(fact.text) - claimed.get(fact.text.partition(": ")[2], set()):
                out.setdefault(number, set()).add(entity_key(entity))
    for rule in kb.rules:
        if rule.country is None and (numbers := _numbers_in(rule.fact) - claimed[rule.fact]):
            text = f"{rule.claim} {rule.fact}"
            for entity in (*kb.find_countries(text), *kb.find_universities(text), *kb.find_scholarships(text),
                           *kb.find_tests(text)):
                for number in numbers:
                    out.setdefault(number, set()).add(entity_key(entity))
    return {number: frozenset(keys) for number, keys in out.items()}


def source_labels(kb) -> frozenset[str]:
    """The site names of the KB's official sources, run together ("campusfrance", "britishcouncil", "studyinjapan"):
    an answer naming the organisation behind one ("Campus France", "Study in Japan portal") names a known body."""
    from urllib.parse import urlsplit

    sources = {f.source for f in kb.facts_for(kb.countries, kb.universities, kb.scholarships, kb.tests)}
    sources |= {r.source for r in kb.rules} | {getattr(c, name) or "" for c in kb.countries
                                                for name in ("visa_portal", "study_portal")}
    labels = {label for url in sources for label in (urlsplit(url).hostname or "").split(".")}
    return frozenset(compact_name(label) for label in labels if len(label) > 3 and label not in ("www", "gouv"))


def compact_name(name: str) -> str:
    return re.sub(r"[\W_]", "", name.lower())


def names_scholarship(sentence: str, scholarship) -> bool:
    low = sentence.lower()
    return any(name.lower() in low for name in (scholarship.name, *scholarship.aliases))


# Figures and the attributes they measure. `numbers_at` reads each number with its unit as one of a few kinds;
# `attribute_near` keeps, in an answer, only those next to a word for that attribute; NUMBER_KINDS says which kinds
# the KB describes for which kind of entity (a university's or scholarship's country counts with it).
NUMBER_KINDS = {
    "Country": frozenset({"hours", "money", "duration", "percent"}),
    "University": frozenset({"money"}),
    "Scholarship": frozenset({"money", "percent"}),
    "AdmissionTest": frozenset({"score", "duration"}),
}
"""Entity kind -> the kinds of figure its KB facts give: work hours, fees and amounts, the length of a visa, work
permit or test result, an insurance or tuition share, a test score."""
ATTRIBUTE_WORDS = {
    "hours": r"work\w*|jobs?|employ\w*|part-time|full-time|weekly|weeks?|fortnight\w*|term|semesters?|holidays?|"
             r"vacations?",
    "money": r"tuition|fees?|costs?|costing|charged?|charges|pays?|paying|payable|paid|prices?|surcharge|IHS|"
             r"insurance|premiums?|OSHC|funds?|funding|financial|bank|blocked|Sperrkonto|proof|living|expenses|rent|"
             r"stipends?|allowances?|scholarships?|bursar(?:y|ies)|awards?|grants?|deposit",
    "duration": r"visas?|permits?|OPT|STEM|post-study|graduate route|PSW|PGWP|stay(?:-back)?|staying|"
                r"work authori[sz]ation|extension|valid(?:ity)?|residence|stamp|job[- ]search",
    "percent": r"insurance|insured|cover(?:s|ed|age)?|reimburs\w*|medical|health|treatment|tuition|fees?|waivers?|"
               r"discounts?|scholarships?|stipends?",
    "score": r"scores?|scored|scoring|bands?|overall|scale|out of|sectional|composite|level",
}
UNIT_TOKENS = frozenset(w.encode() for w in "hour hours hrs percent year years yr yrs month months week weeks points "
                                            "million thousand k m euro euros pound pounds dollar dollars usd eur gbp "
                                            "aud cad inr nzd sgd chf sek nok dkk jpy krw".split())
"""The words of the units and currencies `numbers_at` reads: an answer with none of them (and no %, no currency
sign) has no figure to check but scores."""
COMMON_TEST_WORDS = frozenset(w.encode() for w in "international test graduate digital scholastic university law "
                                                  "medical japanese language deutsche pearson".split())
"""First words of test names that many texts use: not worth a `find_tests` on a conversation."""
SCORE_TOKENS = frozenset(w.encode() for w in "score scores scored scoring band bands overall scale out sectional "
                                              "composite level".split())
"""The words of ATTRIBUTE_WORDS["score"]: an answer with none has no score to check."""
_ATTRIBUTE = {kind: re.compile(rf"\b(?:{words})\b", re.IGNORECASE) for kind, words in ATTRIBUTE_WORDS.items()}
ATTRIBUTE_WINDOW = {"score": (25, 15)}
"""Characters before and after a figure searched for its attribute word (default 60 and 60, within the sentence): a
score's word is next to it ("an overall IELTS score of 7.0", "band 7"), or up to 60 before with no other number
between ("the average GMAT score of students admitted to the Cambridge MBA is 700")."""
_GPA_BEFORE = re.compile(r"\b(?:C?GPA|grade point average)\b[^.\d]{0,12}$", re.IGNORECASE)
_LEAD_TIME_AFTER = re.compile(r"\s(?:before|in advance|ahead|prior|earlier|ago)\b", re.IGNORECASE)
_DIGITS = re.compile(r"\d[\d,.]*")
_ASCII_DIGITS = re.compile(r"[0-9][0-9,.]*")
"""The same on ASCII text, where `re` can skip ahead by the character set (about 20% faster)."""
_CURRENCY_BEFORE = re.compile(r"(?:[$€£₹¥]|\b(?:USD|EUR|GBP|AUD|CAD|INR|NZD|SGD|CHF|SEK))\s?$", re.IGNORECASE)
_UNIT_STARTS = frozenset(" -–%\u00a0")
"""A unit, a range or a currency word after a number starts with a letter or one of these."""
_CURRENCY_SYMBOLS = frozenset("$€£₹¥")
_UNIT_WORDS = ("hour", "hrs", "percent", "per cent", "year", "yr", "month", "week", "point", "million", "thousand",
               "m ", "m.", "m,", "euro", "pound", "dollar", "usd", "eur", "gbp", "aud", "cad", "inr", "nzd", "sgd",
               "chf", "sek", "nok", "dkk", "jpy", "krw", "to ", "-", "–")
"""How what _UNIT_AFTER and _RANGE_AFTER read after a space starts: a cheap test before running them."""
_RANGE_AFTER = re.compile(r"\s?(?:-|–|to)\s?(?:[$€£₹¥]\s?)?\d[\d,.]*")
"""The second half of a range ("20-25 hours", "6.5 to 7"): the first number takes the unit after it."""
_UNIT_AFTER = re.compile(
    r"(?P<hours>\s?(?:hours?|hrs)\b)|(?P<percent>\s?(?:%|percent\b|per cent\b))|(?P<years>[\s-]?(?:years?|yrs?)\b)|"
    r"(?P<months>[\s-]?months?\b)|(?P<weeks>[\s-]?weeks?\b)|(?P<points>\s?points\b)|"
    r"(?P<times>k\b|\s?(?:million|m)\b|\s?thousand\b)?(?P<currency>\s?(?:euros?|pounds?|dollars?|USD|EUR|GBP|AUD|"
    r"CAD|INR|NZD|SGD|CHF|SEK|NOK|DKK|JPY|KRW)\b)?", re.IGNORECASE)
_WORD_NUMBERS = {w: n for n, w in enumerate("one two three four five six seven eight nine ten eleven twelve".split(),
                                             1)}
_LAST_WORD = re.compile(r"\b[A-Za-z]+$")
_WORD_END = re.compile(r"[a-z]+s?\b")
"""With _LAST_WORD: a length in words ("two years"), as the KB often writes them."""


def _numbers_in(text: str) -> set[tuple[str, str]]:
    """Every figure of `text` as (kind, value): '£9,250' -> ('money', '9250'), '20 hours per week' -> ('hours',
    '20'), '5%' -> ('percent', '5'), 'two years' and '24 months' -> ('duration', '24 months'), a bare '7.0' ->
    ('score', '7'). The KB's side: its facts verify what they carry, whatever attribute word is near."""
    return {(kind, value) for _, _, kind, value in numbers_at(text)}


def numbers_at(text: str, bare: bool = True, in_words: bool = True) -> list[tuple[int, int, str, str]]:
    """(start, end, kind, value) for each figure `_numbers_in` reads; start..end spans it as written, with its
    currency and unit; `bare=False` leaves out numbers with neither (scores), for text with no word for a score;
    `in_words=False` leaves out lengths in words ("two years"), for text with no number word.
    Scans digit runs and looks at a few characters either side, instead of running one alternation at every
    position (4x faster)."""
    out = []
    for match in (_ASCII_DIGITS if text.isascii() else _DIGITS).finditer(text):
        start = match.start()
        if start and (text[start - 1].isalnum() or text[start - 1] == "_"):
            continue  # inside a word or a longer token ("B2", "COVID19")
        end = start + len(match.group(0).rstrip(",."))  # "is 730." ends at the 0
        following = text[end:end + 1]
        if following in ".)" and (start == 0 or text[start - 1] == "\n"):
            continue  # a list item's number
        if not (following.isalpha() or following in _UNIT_STARTS) or \
                following == " " and not text[end + 1:end + 9].lower().startswith(_UNIT_WORDS):
            # no unit: most numbers (list items, years, counts)
            money = start and (text[start - 1] in _CURRENCY_SYMBOLS or text[start - 1] == " " and
                               text[start - 2:start - 1].isupper()) and \
                _CURRENCY_BEFORE.search(text, max(0, start - 5), start)
            if (money or bare) and (number := _number_value(text[start:end])) is not None:
                out.append((money.start(), end, "money", _shown(number)) if money else
                           (start, end, "score", _shown(number)))
            continue
        number = _number_value(text[start:end])
        if number is None:
            continue
        after = end
        if (span := _RANGE_AFTER.match(text, end)) is not None:
            after = span.end()
        unit = _UNIT_AFTER.match(text, after)
        if unit.group("currency") is None and unit.group("times") is not None and after != end:
            unit = _UNIT_AFTER.match(text, end)  # "£9,000-12,000" reads each half with its own unit
        stop = unit.end() if unit.end() > after else end
        if unit.group("hours"):
            out.append((start, stop, "hours", _shown(number)))
        elif unit.group("percent"):
            out.append((start, stop, "percent", _shown(number)))
        elif unit.group("years") or unit.group("months"):
            out.append((start, stop, "duration", f"{_shown(number * (12 if unit.group('years') else 1))} months"))
        elif unit.group("weeks"):
            out.append((start, stop, "duration", f"{_shown(number)} weeks"))
        elif unit.group("points"):
            out.append((start, stop, "score", _shown(number)))
        elif (money := _CURRENCY_BEFORE.search(text, max(0, start - 5), start)) or unit.group("currency"):
            times = (unit.group("times") or "").strip().lower()
            number *= {"k": 1000, "thousand": 1000, "m": 1_000_000, "million": 1_000_000}.get(times, 1)
            out.append((money.start() if money else start, stop, "money", _shown(number)))
        elif following.isalpha():
            continue  # "10th", "3rd"
        elif bare:
            out.append((start, end, "score", _shown(number)))
    for unit, months in (("year", 12), ("month", 1), ("week", 0)) if in_words else ():
        at = text.find(unit)  # str.find, then a look at the word before: a regex over the text costs 5x more
        while at > 0:
            if text[at - 1] in " -" and (word := _LAST_WORD.search(text, max(0, at - 8), at - 1)) and \
                    (number := _WORD_NUMBERS.get(word.group(0).lower())) and (unit_end := _WORD_END.match(text, at)):
                value = f"{number * months} months" if months else f"{number} weeks"
                out.append((word.start(), unit_end.end(), "duration", value))
            at = text.find(unit, at + 1)
    return out


def _number_value(digits: str) -> float | None:
    try:
        return float(digits.replace(",", ""))
    except ValueError:
        return None  # "1.2.3"


def _shown(number: float) -> str:
    return str(int(number)) if number == int(number) else f"{number:g}"


def attribute_near(text: str, sentence: tuple[int, int], start: int, end: int, kind: str) -> bool:
    """Whether a word for the attribute `kind` measures occurs near the figure at start..end, in its sentence."""
    before, after = ATTRIBUTE_WINDOW.get(kind, (60, 60))
    if kind == "duration" and _LEAD_TIME_AFTER.match(text, end):
        return False  # "apply 6-8 weeks before the term" is a lead time, not how long a visa lasts
    if kind == "score":
        if _GPA_BEFORE.search(text, max(sentence[0], start - 20), start):
            return False  # "a GPA of 3.7" is the student's grade, not a test score
        cues = list(_ATTRIBUTE[kind].finditer(text, max(sentence[0], start - 60), start))
        if cues and not any(c.isdigit() for c in text[cues[-1].end():start]):
            return True
    return _ATTRIBUTE[kind].search(text, max(sentence[0], start - before), min(sentence[1], end + after)) is not None


_PROGRAMME_CACHE: dict[tuple[str, str], re.Pattern] = {}
DEGREE_WORDS = {
    "medicine": r"(?:bachelor of medicine|mbbs|mbchb|bm bch|undergraduate medicine|medical degree|md)",
    "bachelor": r"(?:bachelor(?:'s)?|undergraduate|bsc|b\.sc\.?|ba|b\.a\.?|beng|bs)",
    "master": r"(?:master(?:'s)?|msc|m\.sc\.?|ma|meng|ms|mphil|mres|m\.s\.?)",
    "mba": r"(?:mba|master of business administration|business school)",
    "law": r"(?:llb|jd|juris doctor|law degree|bachelor of laws|llm|law school|school of law|faculty of law)",
    "phd": r"(?:phd|ph\.d\.?|doctorate|doctoral)",
}


def programme_pattern(degree: str, field: str) -> re.Pattern:
    """A regex for a degree family plus field, e.g. MBBS Medicine -> 'bachelor of medicine|mbbs ...'."""
    key = (degree, field)
    if key not in _PROGRAMME_CACHE:
        d, f = degree.lower().replace(".", ""), field.lower()
        if f == "medicine" or d in ("mbbs", "mbchb", "bm bch", "md"):
            family = DEGREE_WORDS["medicine"]
            field_part = r"(?:medicine|medical|mbbs|mbchb|md)?"
        else:
            family = next((v for k, v in DEGREE_WORDS.items() if k in d or re.fullmatch(v, d)), re.escape(d))
            # "an MBA", "a JD", "law school" name the programme without its field
            field_part = "" if family in (DEGREE_WORDS["mba"], DEGREE_WORDS["law"]) else re.escape(f)
        _PROGRAMME_CACHE[key] = re.compile(rf"\b{family}\b[^.?!\n]{{0,40}}{field_part}", re.IGNORECASE)
    return _PROGRAMME_CACHE[key]
