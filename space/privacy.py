"""Redact personal data from what students type before anything is stored.

`redact(text)` replaces emails, phone numbers, passport/ID-like numbers and street addresses with typed
placeholders (`[EMAIL]`, `[PHONE]`, `[ID_NUMBER]`, `[ADDRESS]`) and counts what it replaced. Standard library only;
importing compiles the regular expressions and does nothing else. The input is never logged, cached or kept.

The passes run in a fixed order, each on the previous pass's output, so a span is claimed by the most specific kind:

1. emails (they contain digits and dots that later passes would otherwise split);
2. ID numbers, with a context word (`passport`, `student ID`, `application number` ...) or in a shape that is an ID
   on its own (SSN, Aadhaar, PAN, Chinese resident ID, UK National Insurance, passport-like letter+digits). It runs
   before phones because a 12-digit Aadhaar or a 9-digit passport number is also a plausible phone number, and an
   ambiguous run is treated as an ID;
3. street addresses (before phones, so a house number and postcode next to each other stay in one address);
4. phone numbers, found as runs of digit groups and cut at spaces into the longest pieces that look like a phone
   (8-15 digits; no lone digit except a leading one or one after the country code; no date, decimal, time range,
   year list or money amount inside).

The rules lean towards redacting: a stored phone number cannot be taken back, a lost word in one training example
costs little. The exceptions are the ordinary numbers counselling talk is full of (test scores, fees, dates, years,
durations, visa subclasses, course codes), which the shapes above are chosen to leave alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from itertools import pairwise

PLACEHOLDERS = {"email": "[EMAIL]", "phone": "[PHONE]", "id_number": "[ID_NUMBER]", "address": "[ADDRESS]"}

# Letters of Latin-script words (accents included), used for word boundaries instead of \w: a number glued to a
# Latin letter is part of a code (CS101), but Chinese and Hindi are written without a space before a number
# ("电话13812345678"), so \w, which also matches CJK and Devanagari, would hide those numbers.
_LATIN = r"A-Za-z\u00C0-\u024F"

# Emails

_EMAIL_AT = r"(?:@|[ \t]*[\[(]at[\])][ \t]*)"  # "name [at] uni.edu" is still an address
_EMAIL_DOT = r"(?:\.|[ \t]*[\[(]dot[\])][ \t]*)"
_EMAIL = re.compile(
    rf"(?<![{_LATIN}\d._%+-])"
    rf"[{_LATIN}\d](?:[{_LATIN}\d._%+'-]*[{_LATIN}\d_%+-])?"  # o'brien@example.ie
    rf"{_EMAIL_AT}"
    rf"(?:[{_LATIN}\d](?:[{_LATIN}\d-]*[{_LATIN}\d])?{_EMAIL_DOT})+"
    r"[A-Za-z]{2,24}"
    r"(?![A-Za-z\d-])",
    re.IGNORECASE,
)

# ID numbers

# A context word that makes the next token an ID on its own ("passport A1234567", "student ID: 2021CS1234").
_ID_WORD = (
    r"passport|(?:national[ \t]+|student[ \t]+|staff[ \t]+|employee[ \t]+|applicant[ \t]+|candidate[ \t]+|"
    r"personal[ \t]+|UCAS[ \t]+|SEVIS[ \t]+|university[ \t]+)?ID|identity|identification|"
    r"(?:driving[ \t]+|driver'?s[ \t]+)?licen[cs]e|SSN|Aadhaa?r|PAN|NRIC|NIN"
)
# A word that needs "number"/"no."/"ID" after it to announce an ID ("visa number", "application no.").
_ID_NAMED = (
    r"visa|application|applicant|student|enrol?ment|enrollment|roll|registration|reference|ref|UCAS|SEVIS|CAS|"
    r"BRP|permit|residence[ \t]+permit|social[ \t]+security|national[ \t]+insurance|NI|tax|insurance[ \t]+policy|"
    r"candidate|admission|offer|matriculation|I-20|DS-160|GIC|OSHC"
)
_NUMBER_WORD = r"(?:(?:number|num|no|nr)\b\.?|#)"
_ID_TOKEN_CHARS = r"(?=[A-Za-z-]*\d)[A-Za-z\d](?:[A-Za-z\d]|-(?=[A-Za-z\d])){5,17}"
_ID_TOKEN_END = r"(?![A-Za-z\d\u00C0-\u024F_-])"
_ID_TOKEN = rf"(?P<token>{_ID_TOKEN_CHARS}){_ID_TOKEN_END}"
# After a strong context word, digit groups with spaces are one ID too: "SSN: 123 45 6789", "passport 1234 5678".
_ID_TOKEN_OR_SPACED = rf"(?P<token>{_ID_TOKEN_CHARS}|\d{{2,6}}(?:[ \t]\d{{2,6}}){{1,3}}){_ID_TOKEN_END}"
_ID_CONTEXT = re.compile(
    rf"\b(?:(?:{_ID_WORD})\b(?:[ \t]+card\b)?(?:[ \t]*{_NUMBER_WORD})?"
    rf"|(?:{_ID_NAMED})\b[ \t]*(?:{_NUMBER_WORD}|ID\b|code\b))"
    r"[ \t]*(?:[:=#-][ \t]*)?(?:(?:is|was|reads)[ \t]*:?[ \t]+)?"
    rf"{_ID_TOKEN_OR_SPACED}",
    re.IGNORECASE,
)
# Bare "number 123456789" / "no. AB12345" / "#12345678": weaker evidence, so no "is" in between, and the caller checks
# that the word before is not phone|mobile|WhatsApp ... (those are phone numbers, left to the phone pass).
_ID_WEAK_CONTEXT = re.compile(
    rf"(?:\b(?:number|num\.|no\.|nr\.)|#)[ \t]*:?[ \t]*{_ID_TOKEN}",
    re.IGNORECASE,
)
_PHONE_WORD_BEFORE = re.compile(
    r"\b(?:phone|mobile|cell|cellphone|contact|whats[ \t]?app|telephone|tel|landline|fax|wechat|viber|signal|"
    r"telegram|office|home|work|emergency)[ \t]*$",
    re.IGNORECASE,
)
_DATE_LIKE = re.compile(
    r"(?:19|20)\d\d[-./](?:(?:19|20)\d\d|\d\d)"  # year ranges 2024-2025, 2024-25
    r"|\d{1,2}[-./]\d{1,2}[-./](?:19|20)?\d\d"  # 12-09-2025, 12.09.25
    r"|(?:19|20)\d\d[-./]\d{1,2}[-./]\d{1,2}"  # 2025-09-12
)
# 20250912 reads as a date, not a phone; as a student ID after "ID:" it is still an ID, so only phones check this.
_COMPACT_DATE = re.compile(r"(?:19|20)\d\d(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])")

# IDs recognisable by shape alone, upper case as they are printed (lower case needs a context word: "batch2023s"
# is not a PAN). Each is guarded so it is not the tail or head of a longer number.
_ID_LEFT = r"(?<![\dA-Za-z_+])(?<![+\d][ .-])"
_ID_RIGHT = r"(?![\dA-Za-z_])(?![-.]?\d)"
_ID_SHAPES = re.compile(
    "|".join(
        rf"{_ID_LEFT}(?:{shape}){_ID_RIGHT}"
        for shape in (
            r"\d{17}[\dXx]",  # Chinese resident identity card: 17 digits and a check digit (0-9 or X)
            r"\d{4}([ -]?)\d{4}\1\d{4}",  # Aadhaar: 12 digits, often 4-4-4 (also a phone shape: ID wins)
            r"\d{3}-\d{2}-\d{4}",  # US Social Security Number
            r"[A-Z]{2}[ \t]?\d{2}[ \t]?\d{2}[ \t]?\d{2}[ \t]?[A-D]",  # UK National Insurance: QQ 12 34 56 C
            r"[A-Z]{5}\d{4}[A-Z]",  # Indian PAN: ABCDE1234F
            r"[A-Z]{1,2}\d{7,8}",  # passports: A1234567, K12345678, AB1234567
        )
    )
)
_FOUR_YEARS = re.compile(r"(?:19|20)\d\d")

# Street addresses

_UPPER = r"A-Z\u00C0-\u00DE"
_WORD_CHARS = r"A-Za-z\u00C0-\u024F'’"
_STREET_TYPES = [
    "Street", "Road", "Avenue", "Lane", "Boulevard", "Drive", "Way", "Place", "Court", "Close", "Crescent", "Terrace",
    "Square", "Highway", "Parkway", "Circle", "Mews", "Gardens", "Grove", "Row", "Walk", "Parade", "Alley",
    "Expressway", "Marg", "Nagar", "Straße", "Strasse",
]  # fmt: skip
_STREET_ABBREVIATIONS = [
    "St",
    "Rd",
    "Ave",
    "Av",
    "Ln",
    "Blvd",
    "Dr",
    "Pl",
    "Ct",
    "Cres",
    "Tce",
    "Sq",
    "Hwy",
    "Pkwy",
    "Cir",
    "Str",
]
_STREET_TYPE = (
    "(?:"
    + "|".join(sorted({w for t in _STREET_TYPES for w in (t, t.upper())}, key=len, reverse=True))
    + "|(?:"
    + "|".join(sorted({w for t in _STREET_ABBREVIATIONS for w in (t, t.upper())}, key=len, reverse=True))
    + r")\.?)"
    + rf"(?![{_WORD_CHARS}])"
)
# Street types written first, followed by the name: "12 Rue de Rivoli", "Calle Mayor 5", "Via Roma 10".
_LEADING_TYPE = r"(?:Rue|Calle|Carrer|Avenida|Avda\.?|Via|Viale|Piazza|Corso|Rua|Plaza|Paseo|Praça)"
_LEADING_TYPE_HOUSE_FIRST = rf"(?:{_LEADING_TYPE}|Avenue|Boulevard|Bd|Place|Chaussée|Allée|Quai|Impasse)"
# German, Dutch and Scandinavian compounds: "Hauptstraße 5", "Kaiserstr. 12", "Prinsengracht 263".
_COMPOUND_STREET = (
    rf"[{_UPPER}][a-zäöüßåæø]+(?:straße|strasse|str\.|weg|platz|allee|gasse|damm|ufer|straat|laan|gracht|plein|"
    r"gatan|gade|vej)"
)
_PARTICLE = r"(?:de|du|des|la|le|les|del|della|di|da|do|dos|das|von|van|der|den|y|e|d'|l')"
# Title-case headlines are not addresses: "5 Tips For The Road" is stopped by "For". "The" stays allowed for
# "12 The Avenue".
_NOT_A_NAME = (
    r"(?!(?:For|To|Of|And|Or|In|On|At|An?|With|From|By|Into|Per|Vs|Is|Are|Was|Were|Be|My|Your|Our|Their|His|Her|"
    r"I|You|We|They|It|This|That|These|Those|Best|Top|Ways|Tips|Things|Reasons|Steps|Minutes?|Hours?|Days?|Weeks?|"
    r"Months?|Years?|Miles?|Km)\b)"
)
_NAME_WORD = rf"(?:{_NOT_A_NAME}[{_UPPER}][{_WORD_CHARS}.-]*|\d{{1,3}}(?:st|nd|rd|th))"
_STREET_NAME = rf"{_NAME_WORD}(?:[ \t]+{_NAME_WORD}){{0,3}}"
_FOREIGN_NAME = rf"(?:{_PARTICLE}[ \t]+)*{_NAME_WORD}(?:[ \t]+(?:{_PARTICLE}|{_NAME_WORD})){{0,4}}"
_HOUSE = r"\d{1,5}[A-Za-z]?(?:[/-]\d{1,5}[A-Za-z]?)?"
_HOUSE_NOT_YEAR = r"(?!(?:19|20)\d\d\b)\d{1,4}[A-Za-z]?(?:[/-]\d{1,4}[A-Za-z]?)?"
_UNIT_WORD = (
    r"(?:Flat|Apt\.?|Apartment|Unit|Suite|Ste\.?|Room|Rm\.?|Level|Floor|Fl\.|Door|Plot|Block|House|"
    r"H\.?[ \t]?No\.?|No\.|#)"
)
_UNIT_ID = r"#?[ \t]*[\dA-Za-z]{1,6}(?:[-/][\dA-Za-z]{1,6})?"
_UNIT_PREFIX = (
    rf"(?:(?:\d{{1,2}}(?:st|nd|rd|th)[ \t]+Floor|{_UNIT_WORD}[ \t]*{_UNIT_ID})(?:,?[ \t]+|,|/(?=\d)))"
    rf"(?:{_UNIT_WORD}[ \t]*{_UNIT_ID}(?:,?[ \t]+|,))?"
)
_UNIT_SUFFIX = rf"(?:,?[ \t]*(?:Flat|Apt\.?|Apartment|Unit|Suite|Ste\.?|#)[ \t]*{_UNIT_ID})"
_POSTCODE = (
    r"(?:[ \t]*[-–][ \t]*)?(?:"
    r"[A-Z]{1,2}\d[A-Z\d]?[ \t]?\d[A-Z]{2}"  # UK: SW1A 1AA, NW1 6XE
    r"|[A-Z]\d[A-Z][ \t]?\d[A-Z]\d"  # Canada: K1A 0B1
    r"|(?:[A-Z]{2}[ \t]+)?\d{5}(?:-\d{4})?"  # US ZIP, with its state: CA 94043, 94103-1234
    r"|\d{3}[ \t]\d{3}|\d{4,6}"  # India 560 001 / 560001, Germany 10115, France 75001, Australia 2000
    r")(?![\dA-Za-z])(?![ \t]?[-.]?\d)"
)
_CITY = rf"[{_UPPER}][{_WORD_CHARS}-]+(?:[ \t]+[{_UPPER}][{_WORD_CHARS}-]+){{0,2}}(?![\w])"
_ADDRESS_TAIL = (
    rf"{_UNIT_SUFFIX}?(?:"
    rf",[ \t]*{_CITY}(?:,?[ \t]*{_POSTCODE})?(?:,[ \t]*{_CITY})?"  # , London SW1A 1AA / , Boston, MA 02115
    rf"|,?[ \t]*{_POSTCODE}(?:,?[ \t]*{_CITY})?(?:,[ \t]*{_CITY})?"  # , 75001 Paris, France
    rf"|[ \t]+{_CITY},?[ \t]*{_POSTCODE}(?:,[ \t]*{_CITY})?"  # London SW1A 1AA (no comma)
    r")?"
)
_HOUSE_START = r"(?<![\dA-Za-z_/.-])"
_ADDRESS = re.compile(
    r"(?:"
    # 45 Park Road / Flat 3, 45 Park Road / Unit 5/12 King St / 23 Gandhi Marg
    rf"(?:{_UNIT_PREFIX}|{_HOUSE_START}){_HOUSE},?[ \t]+{_STREET_NAME}[ \t]+{_STREET_TYPE}"
    # 12 Rue de Rivoli / 101 Avenue des Champs-Élysées
    rf"|(?:{_UNIT_PREFIX}|{_HOUSE_START}){_HOUSE},?[ \t]+{_LEADING_TYPE_HOUSE_FIRST}[ \t]+{_FOREIGN_NAME}"
    # Calle Mayor 5 / Via Roma 10, n° included
    rf"|\b{_LEADING_TYPE}[ \t]+{_FOREIGN_NAME},?[ \t]*(?:n[º°o]\.?[ \t]*)?{_HOUSE_NOT_YEAR}"
    # Hauptstraße 5 / Berliner Straße 12
    rf"|(?:\b{_NAME_WORD}[ \t]+)?(?:\b{_COMPOUND_STREET}|\bStraße|\bStrasse|\bStr\.)[ \t]*{_HOUSE_NOT_YEAR}"
    # PO Box 1234
    r"|\bP\.?[ \t]?O\.?[ \t]+Box[ \t]+\d{1,6}"
    rf")(?![\d{_LATIN}_]){_ADDRESS_TAIL}"
)
# Chat is often typed in lower case ("i live at 7 rose lane"). Lower-case street names are taken only after a word
# that announces an address, and only with street types that are not also everyday words ("5 minutes drive",
# "the best way", "a quiet place" stay).
_PLAIN_STREET_TYPE = (
    r"(?i:street|st|road|rd|avenue|ave|lane|ln|boulevard|blvd|crescent|terrace|highway|hwy|parkway|marg|nagar|"
    r"straße|strasse)\.?"
    rf"(?![{_WORD_CHARS}])"
)
_ADDRESS_CUE = (
    r"(?i:\b(?:(?:live|lives|living|stay|stays|staying|reside|resides|residing|located|based|moved|moving|ship|send|"
    r"deliver|post)(?:[ \t]+(?:it|them|this|that|these))?[ \t]+(?:at|to|on|in)|address(?:[ \t]+is)?[ \t]*:?))[ \t]+"
)
_CUED_ADDRESS = re.compile(
    rf"(?P<cue>{_ADDRESS_CUE})"
    rf"(?:(?i:{_UNIT_PREFIX})|{_HOUSE_START}){_HOUSE},?[ \t]+[\d{_WORD_CHARS}.-]+(?:[ \t]+[\d{_WORD_CHARS}.-]+){{0,2}}"
    rf"[ \t]+{_PLAIN_STREET_TYPE}{_ADDRESS_TAIL}"
)

# Phone numbers

# A run of digit groups joined by phone separators: space, dash, dot, parentheses, a leading + or (.
_PHONE_RUN = re.compile(
    r"(?<![\dA-Za-z_/@])(?<!\d[.,-])"
    r"(?:\+[ \t]?|\([ \t]?\+?)?"
    r"\d+"
    r"(?:(?:[ \t]?[-.][ \t]?|[ \t]?\)[ \t]?[-.]?[ \t]?|[ \t]?\([ \t]?|[ \t])\d+)*"
    r"\)?"
)
_DIGITS = re.compile(r"\d+")
_DECIMAL = re.compile(r"\d+\.\d+")
_CURRENCY_CODES = "USD|EUR|GBP|INR|AUD|CAD|NZD|SGD|CNY|RMB|JPY|CHF|HKD|AED"
# A number after a currency sign or code, or before one or a unit, is an amount: never an ID or a phone number.
_CURRENCY_BEFORE = re.compile(rf"(?:[$€£¥₹₩₽]|\b(?:{_CURRENCY_CODES}|Rs\.?|US\$|A\$|C\$))[ \t]*$", re.IGNORECASE)
_UNIT_AFTER = re.compile(rf"[ \t]*(?:[$€£¥₹%‰]|(?:{_CURRENCY_CODES}|euros?|dollars?|pounds?|rupees?|yuan|yen|lakhs?|"
                         r"crores?|won|francs?)\b)", re.IGNORECASE)
_MAX_PHONE_GROUPS = 8  # "+33 1 23 45 67 89" is 6; more groups than this is a list of numbers, not a phone


def _redact_emails(text: str) -> tuple[str, int]:
    return _EMAIL.subn(PLACEHOLDERS["email"], text)


def _redact_ids(text: str) -> tuple[str, int]:
    count = 0

    def context(match: re.Match[str], weak: bool) -> str:
        nonlocal count
        token = match.group("token")
        digits = sum(c.isdigit() for c in token)
        if _DATE_LIKE.fullmatch(token):
            return match.group(0)  # "student ID 2024-2025" names a year, not an ID
        if digits < 4 and (digits < 2 or any(c.islower() for c in token)):
            return match.group(0)  # "passport photo2": real IDs carry more digits (L898902C3, VN12AB34)
        parts = token.split()
        if len(parts) > 1 and (digits < 6 or all(_FOUR_YEARS.fullmatch(p) for p in parts)):
            return match.group(0)  # "ID card 2025 2026" lists years
        if weak:
            if digits < (8 if token.isdigit() else 5) or any(c.islower() for c in token):
                return match.group(0)  # "no. 123456" is too short to call an ID, "#StudyAbroad2025" is a hashtag
            if _PHONE_WORD_BEFORE.search(match.string, max(0, match.start() - 40), match.start()):
                return match.group(0)  # "phone number 9876543210": the phone pass names it
        count += 1
        return match.group(0)[: match.start("token") - match.start()] + PLACEHOLDERS["id_number"]

    def shape(match: re.Match[str]) -> str:
        nonlocal count
        groups = _DIGITS.findall(match.group(0))
        if len(groups) == 3 and all(_FOUR_YEARS.fullmatch(g) for g in groups):
            return match.group(0)  # "2024 2025 2026" is three intakes, not an Aadhaar
        count += 1
        return PLACEHOLDERS["id_number"]

    text = _ID_CONTEXT.sub(lambda m: context(m, weak=False), text)
    text = _ID_WEAK_CONTEXT.sub(lambda m: context(m, weak=True), text)
    text = _ID_SHAPES.sub(shape, text)
    return text, count


def _redact_addresses(text: str) -> tuple[str, int]:
    text, count = _ADDRESS.subn(PLACEHOLDERS["address"], text)
    text, cued = _CUED_ADDRESS.subn(lambda m: m.group("cue") + PLACEHOLDERS["address"], text)
    return text, count + cued


def _phone_piece(text: str, start: int, end: int) -> bool:
    """Whether `text[start:end]`, a whitespace-bounded piece of a digit run, reads as one phone number."""
    piece = text[start:end]
    groups = list(_DIGITS.finditer(piece))
    digits = sum(len(g.group()) for g in groups)
    limit = 17 if piece.lstrip("+( \t").startswith("00") else 15  # E.164 allows 15 digits after the 00/+ prefix
    if not 8 <= digits <= limit:
        return False
    if piece.count("(") != piece.count(")") or piece.find(")") < piece.find("("):
        return False
    # A lone digit may open the number ("1 415 ...") or follow a country code ("+33 1 23 45 67 89").
    lone_digit_ok = 2 if piece.lstrip("( \t").startswith(("+", "00")) else 1
    for group in groups[lone_digit_ok:]:
        enclosed = piece[group.start() - 1 : group.start()] == "(" and piece[group.end() : group.end() + 1] == ")"
        if len(group.group()) < 2 and not enclosed:
            return False  # "7.5 7.0 6.5" and "3 4 5 6" are scores and lists; "(0)" is a trunk prefix
    for unit in piece.split():
        bare = unit.strip("()+")
        if _DATE_LIKE.fullmatch(bare) or _COMPACT_DATE.fullmatch(bare) or _DECIMAL.fullmatch(bare):
            return False
        if "." in bare and "-" in bare:
            return False  # "10.30-12.30" is a time range; phones keep to one kind of separator within a block
    sizes = [len(g.group()) for g in groups]
    if groups[-1].group() == "000" and len(sizes) > 1 and sizes[0] <= 3 and all(n == 3 for n in sizes[1:]):
        return False  # "10 000 000 students", "1.000.000.000": a round amount in thousands, not a phone
    if len(groups) > 1 and all(_FOUR_YEARS.fullmatch(g.group()) for g in groups):
        return False
    # "€12 000 000", "15 000 000 won", "12345678%" are amounts
    return not (_CURRENCY_BEFORE.search(text, max(0, start - 8), start) or _UNIT_AFTER.match(text, end))


def _phones_in_run(text: str, run: re.Match[str]) -> list[tuple[int, int]]:
    """The phone numbers inside one run of digit groups, as (start, end) spans, left to right.

    A piece may only begin or end where the separator holds a space, so "2025-09-12" or "7.5" is never split. From
    each possible beginning the longest valid piece wins; "12.09.2025 020 7946 0958" gives one phone, after the date.
    """
    groups = list(_DIGITS.finditer(text, run.start(), run.end()))
    begins: list[int | None] = [run.start()]
    ends: list[int | None] = []
    for before, after in pairwise(groups):
        gap = (before.end(), after.start())
        first_space = min((i for i in (text.find(" ", *gap), text.find("\t", *gap)) if i >= 0), default=None)
        last_space = max(text.rfind(" ", *gap), text.rfind("\t", *gap))
        ends.append(first_space)  # a piece ending here keeps a ")" that comes before the space
        begins.append(last_space + 1 if first_space is not None else None)  # and a "(" that comes after it
    ends.append(run.end())
    spans = []
    first = 0
    while first < len(groups):
        if begins[first] is not None:
            for last in range(min(len(groups), first + _MAX_PHONE_GROUPS) - 1, first - 1, -1):
                if ends[last] is None:
                    continue
                begin, finish = _without_stray_brackets(text, begins[first], ends[last])
                if _phone_piece(text, begin, finish):
                    spans.append((begin, finish))
                    first = last
                    break
        first += 1
    return spans


def _without_stray_brackets(text: str, begin: int, finish: int) -> tuple[int, int]:
    """Drop a bracket that belongs to the sentence, not the number: "(call 020 7946 0958)"."""
    while text[finish - 1] == ")" and text.count("(", begin, finish) < text.count(")", begin, finish):
        finish -= 1
    while text[begin] == "(" and text.count("(", begin, finish) > text.count(")", begin, finish):
        begin += 1
    return begin, finish


def _redact_phones(text: str) -> tuple[str, int]:
    spans = [span for run in _PHONE_RUN.finditer(text) for span in _phones_in_run(text, run)]
    out: list[str] = []
    position = 0
    for begin, finish in spans:
        out += [text[position:begin], PLACEHOLDERS["phone"]]
        position = finish
    out.append(text[position:])
    return "".join(out), len(spans)


def redact(text: str) -> tuple[str, dict[str, int]]:
    """Replace emails, phone numbers, passport/ID-like numbers and street addresses with typed placeholders; return
    the redacted text and the count per kind (all four keys always present)."""
    counts = dict.fromkeys(PLACEHOLDERS, 0)
    text, counts["email"] = _redact_emails(text)
    text, counts["id_number"] = _redact_ids(text)
    text, counts["address"] = _redact_addresses(text)
    text, counts["phone"] = _redact_phones(text)
    return text, counts


def redact_many(texts: Iterable[str]) -> tuple[list[str], dict[str, int]]:
    """`redact` each text; return the redacted texts in order and the counts summed over all of them."""
    totals = dict.fromkeys(PLACEHOLDERS, 0)
    redacted = []
    for text in texts:
        clean, counts = redact(text)
        redacted.append(clean)
        for kind, n in counts.items():
            totals[kind] += n
    return redacted, totals
