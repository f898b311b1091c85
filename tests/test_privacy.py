"""space/privacy.py: every kind of personal data is replaced by its placeholder and counted exactly, the ordinary
numbers of counselling talk (scores, fees, dates, visa names) come through untouched, and redaction is idempotent."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from space import privacy
from space.privacy import PLACEHOLDERS, redact, redact_many

REPO = Path(__file__).parent.parent
KINDS = ("email", "phone", "id_number", "address")


def counts(**nonzero: int) -> dict[str, int]:
    """The counts `redact` must return: every kind present, zero unless named."""
    return {kind: nonzero.get(kind, 0) for kind in KINDS}


# (text, personal data that must be gone, exact redacted text)
EMAILS = [
    ("mail me at a.b+c@uni.ac.uk.", "a.b+c@uni.ac.uk", "mail me at [EMAIL]."),
    ("Contact: JOHN.DOE@Mail.Example.COM please", "JOHN.DOE@Mail.Example.COM", "Contact: [EMAIL] please"),
    ("Email: li.wei@mails.tsinghua.edu.cn", "li.wei@mails.tsinghua.edu.cn", "Email: [EMAIL]"),
    ("write to josé.garcía@uni.es today", "josé.garcía@uni.es", "write to [EMAIL] today"),
    ("(me@x.io)", "me@x.io", "([EMAIL])"),
    ("<student_01@college.edu>", "student_01@college.edu", "<[EMAIL]>"),
    ("Is priya.sharma2003@gmail.com ok?", "priya.sharma2003@gmail.com", "Is [EMAIL] ok?"),
    ("reply to first-last@sub.domain.co.in,thanks", "first-last@sub.domain.co.in", "reply to [EMAIL],thanks"),
    ("my mail is john [at] gmail [dot] com", "john [at] gmail", "my mail is [EMAIL]"),
    ("A1234567@uni.edu is my login", "A1234567@uni.edu", "[EMAIL] is my login"),
    ("Send it to: o'brien@example.ie;", "o'brien@example.ie", "Send it to: [EMAIL];"),
    ("email:'me@x.io'", "me@x.io", "email:'[EMAIL]'"),
    ("EMAIL:MARIA.ROSSI+apply@POLIMI.IT", "MARIA.ROSSI+apply@POLIMI.IT", "EMAIL:[EMAIL]"),
]

PHONES = [
    ("+44 20 7946 0958", "7946 0958", "[PHONE]"),
    ("call +91-98765-43210 please", "98765-43210", "call [PHONE] please"),
    ("US: +1 (415) 555-0132.", "555-0132", "US: [PHONE]."),
    ("0044 20 7946 0958", "0044 20", "[PHONE]"),
    ("Office 020 7946 0958", "020 7946", "Office [PHONE]"),
    ("(415) 555-0132", "(415)", "[PHONE]"),
    ("text 415.555.0132 now", "415.555.0132", "text [PHONE] now"),
    ("My mobile is 98765 43210.", "98765 43210", "My mobile is [PHONE]."),
    ("old number 0171 1234567", "0171 1234567", "old number [PHONE]"),
    ("WhatsApp me on +86 138 1234 5678", "138 1234 5678", "WhatsApp me on [PHONE]"),
    ("+44 (0) 20 7946 0958", "(0) 20", "[PHONE]"),
    ("Paris: +33 1 23 45 67 89", "+33 1 23", "Paris: [PHONE]"),
    ("tel:+441234567890", "441234567890", "tel:[PHONE]"),
    ("1-800-555-0199 is toll free", "800-555-0199", "[PHONE] is toll free"),
    ("(call 020 7946 0958)", "7946 0958", "(call [PHONE])"),
    ("phone number 9876543210", "9876543210", "phone number [PHONE]"),
    ("Ring +971 50 123 4567 after 5pm", "123 4567", "Ring [PHONE] after 5pm"),
    ("Phone: +1 415 555 0132 ext 22", "555 0132", "Phone: [PHONE] ext 22"),
    ("+7 (495) 123-45-67", "123-45-67", "[PHONE]"),
    ("Sydney (02) 9876 5432", "9876 5432", "Sydney [PHONE]"),
    ("+55 11 91234-5678", "91234-5678", "[PHONE]"),
    ("My WhatsApp: 98765-43210", "98765-43210", "My WhatsApp: [PHONE]"),
    ("on 12.09.2025 020 7946 0958", "7946 0958", "on 12.09.2025 [PHONE]"),
]

IDS = [
    ("passport A1234567", "A1234567", "passport [ID_NUMBER]"),
    ("K12345678 is on my visa", "K12345678", "[ID_NUMBER] is on my visa"),
    ("It is AB1234567.", "AB1234567", "It is [ID_NUMBER]."),
    ("passport number 123456789", "123456789", "passport number [ID_NUMBER]"),
    ("my number 123456789", "123456789", "my number [ID_NUMBER]"),
    ("ID no. 123456789", "123456789", "ID no. [ID_NUMBER]"),
    ("#123456789 on the form", "123456789", "#[ID_NUMBER] on the form"),
    ("SSN 123-45-6789", "123-45-6789", "SSN [ID_NUMBER]"),
    ("Aadhaar 1234 5678 9012", "5678 9012", "Aadhaar [ID_NUMBER]"),
    ("1234 5678 9012", "5678 9012", "[ID_NUMBER]"),
    ("PAN: ABCDE1234F", "ABCDE1234F", "PAN: [ID_NUMBER]"),
    ("I'm 23 and my PAN is abcde1234f", "abcde1234f", "I'm 23 and my PAN is [ID_NUMBER]"),
    ("身份证 11010519491231002X", "11010519491231002X", "身份证 [ID_NUMBER]"),
    ("NI: QQ 12 34 56 C", "QQ 12 34 56 C", "NI: [ID_NUMBER]"),
    ("NI number QQ123456C", "QQ123456C", "NI number [ID_NUMBER]"),
    ("student ID: 2021CS1234", "2021CS1234", "student ID: [ID_NUMBER]"),
    ("visa number is VN12AB34", "VN12AB34", "visa number is [ID_NUMBER]"),
    ("application number APP-2024-778812", "778812", "application number [ID_NUMBER]"),
    ("Passport Number: L898902C3", "L898902C3", "Passport Number: [ID_NUMBER]"),
    ("Driving licence MORGA753116SM9IJ", "MORGA753116SM9IJ", "Driving licence [ID_NUMBER]"),
    ("SEVIS ID N0012345678", "N0012345678", "SEVIS ID [ID_NUMBER]"),
    ("ID: 9876543210", "9876543210", "ID: [ID_NUMBER]"),
    ("roll no. 2021001234", "2021001234", "roll no. [ID_NUMBER]"),
    ("my id is 20210512", "20210512", "my id is [ID_NUMBER]"),
    ("SSN: 123 45 6789", "123 45 6789", "SSN: [ID_NUMBER]"),
    ("passport number 1234 5678", "1234 5678", "passport number [ID_NUMBER]"),
    ("TRF number 24GB012345ABCD001A", "24GB012345ABCD001A", "TRF number [ID_NUMBER]"),
]

ADDRESSES = [
    ("Flat 3, 45 Park Road", "45 Park Road", "[ADDRESS]"),
    ("Apt 12B, 221B Baker Street", "221B Baker", "[ADDRESS]"),
    ("Unit 5/12 King St", "5/12 King", "[ADDRESS]"),
    ("I live at 45 Park Road, London SW1A 1AA.", "SW1A 1AA", "I live at [ADDRESS]."),
    ("12 Rue de Rivoli, 75001 Paris", "Rivoli", "[ADDRESS]"),
    ("Calle Mayor 5, 28013 Madrid", "Mayor 5", "[ADDRESS]"),
    ("Hauptstraße 5, 10115 Berlin", "10115", "[ADDRESS]"),
    ("Berliner Straße 12", "Straße 12", "[ADDRESS]"),
    ("HQ: 1600 Amphitheatre Pkwy, Mountain View, CA 94043", "94043", "HQ: [ADDRESS]"),
    ("23 Gandhi Marg, New Delhi 110001", "Gandhi Marg", "[ADDRESS]"),
    ("Send it to 12 MG Road, Bangalore 560001 by Friday", "560001", "Send it to [ADDRESS] by Friday"),
    ("45, Lajpat Nagar", "Lajpat", "[ADDRESS]"),
    ("Apartment 4B, 350 5th Ave, New York, NY 10118", "5th Ave", "[ADDRESS]"),
    ("123 Main St #4B, Springfield", "Springfield", "[ADDRESS]"),
    ("Via Roma 10, 00184 Roma", "Roma 10", "[ADDRESS]"),
    ("Prinsengracht 263, 1016 GV Amsterdam", "263", "[ADDRESS]"),
    ("101 Avenue des Champs-Élysées, 75008 Paris", "Champs", "[ADDRESS]"),
    ("Room 101, 7 Oak Close", "Oak Close", "[ADDRESS]"),
    ("i live at 7 rose lane", "rose lane", "i live at [ADDRESS]"),
    ("My address: 14 Elm Drive.", "Elm Drive", "My address: [ADDRESS]."),
    ("P.O. Box 1234, Nairobi", "1234", "[ADDRESS]"),
    ("12 The Avenue, Cambridge", "The Avenue", "[ADDRESS]"),
    ("Level 3, 45 Park Road", "Level 3", "[ADDRESS]"),
    ("please send it to 12 mg road, Bangalore 560001", "mg road", "please send it to [ADDRESS]"),
    ("221B Baker Street, London NW1 6XE", "NW1 6XE", "[ADDRESS]"),
    ("Ship to 500 Howard St, San Francisco, CA 94103.", "94103", "Ship to [ADDRESS]."),
    ("9 Sunset Blvd", "Sunset", "[ADDRESS]"),
    ("88 Queen's Crescent", "Queen's", "[ADDRESS]"),
    ("near 1 Russell Square", "Russell", "near [ADDRESS]"),
    ("Lindenstrasse 12", "Lindenstrasse", "[ADDRESS]"),
]

POSITIVES = (
    [pytest.param(*case, "email", id=f"email-{i}") for i, case in enumerate(EMAILS)]
    + [pytest.param(*case, "phone", id=f"phone-{i}") for i, case in enumerate(PHONES)]
    + [pytest.param(*case, "id_number", id=f"id-{i}") for i, case in enumerate(IDS)]
    + [pytest.param(*case, "address", id=f"address-{i}") for i, case in enumerate(ADDRESSES)]
)


@pytest.mark.parametrize(("text", "secret", "expected", "kind"), POSITIVES)
def test_each_kind_is_replaced_and_counted(text: str, secret: str, expected: str, kind: str) -> None:
    redacted, found = redact(text)
    assert secret in text  # the case names a real piece of the input
    assert redacted == expected
    assert PLACEHOLDERS[kind] in redacted
    assert secret not in redacted
    assert found == counts(**{kind: 1})


NEGATIVES = [
    "IELTS 7.5",
    "IELTS 7.5 7.0 6.5 7.0 (L R W S)",
    "TOEFL 100",
    "GRE 320",
    "GPA 3.8/4.0",
    "I scored 1450/1600 on the SAT and 330 in GRE (165 Q 165 V).",
    "Tuition is $15,000 a year.",
    "€11,208 per year",
    "£9,250",
    "INR 25,00,000",
    "The fee is INR 1,50,000 per annum",
    "1,000,000",
    "about €12 000 000 in scholarships",
    "10 000 000 students study abroad",
    "Tuition is 12 000 000 won",
    "20 hours per week",
    "2024-2025 intake",
    "Batch 2023-24",
    "intakes 2024 2025 2026",
    "September 2025",
    "Spring 2025 intake",
    "12 months",
    "Top 100 universities",
    "1,500 words",
    "3 years",
    "CAS",
    "Subclass 500",
    "F-1",
    "Tier 4",
    "Student visa (subclass 500)",
    "Subclass 500 visa costs AUD 710",
    "CS101",
    "Room 101",
    "2025",
    "12/09/2025",
    "2025-09-12",
    "12.09.2025",
    "20250912",
    "dates 01/02/2024 - 03/04/2024",
    "10:30",
    "open 10.30-12.30 daily",
    "85%",
    "Section 3.2",
    "call 911",
    "ext. 1234",
    "Call 112 or 999 in emergencies",
    "I live near Main Street",
    "5 minutes drive from campus",
    "10 miles down the road",
    "94103",
    "My rank was 12345 in JEE",
    "student ID 2024-2025",
    "ID card 2025 2026",
    "student ID 12 months",
    "passport photo2",
    "#StudyAbroad2025",
    "Between 2019 and 2023 I worked 40 hours per week",
    "Via UCAS 2025 applications open",
    "ISBN 978-3-16-148410-0",
    "version v2.1.3",
    "1.000.000.000 people",
    "5 Tips For The Road",
    "10 Best Ways To Drive",
    "3 Years In Court",
    "Top 10 universities in London",
    "Accommodation £150-£250 per week",
    "Visa fee A$1,600",
    "costs 1 200 000 yen",
    "Call between 9.00 and 17.00",
    "GPA 8.5/10",
    "Class 12 marks 92%",
    "Offer letter no. 3 of 5",
    "UCAS deadline 29 January 2025, 18:00 UK time",
    "",
]


@pytest.mark.parametrize("text", NEGATIVES)
def test_ordinary_numbers_are_kept(text: str) -> None:
    assert redact(text) == (text, counts())


MIXED = [
    (
        (
            "Hi, I'm Priya. Email priya.sharma@gmail.com or WhatsApp +91 98765 43210; "
            "passport K12345678, Aadhaar 2345 6789 0123. I live at Flat 3, 45 Park Road, London SW1A 1AA. "
            "IELTS 7.5, budget £9,250, intake September 2025."
        ),
        (
            "Hi, I'm Priya. Email [EMAIL] or WhatsApp [PHONE]; "
            "passport [ID_NUMBER], Aadhaar [ID_NUMBER]. I live at [ADDRESS]. "
            "IELTS 7.5, budget £9,250, intake September 2025."
        ),
        counts(email=1, phone=1, id_number=2, address=1),
    ),
    (
        "Two emails: a@b.co and c.d@e.org, two phones: 020 7946 0958 and (415) 555-0132, GRE 320.",
        "Two emails: [EMAIL] and [EMAIL], two phones: [PHONE] and [PHONE], GRE 320.",
        counts(email=2, phone=2),
    ),
    (
        "SSN 123-45-6789\nAddress: 1600 Amphitheatre Pkwy, Mountain View, CA 94043\nTOEFL 100, GPA 3.8/4.0",
        "SSN [ID_NUMBER]\nAddress: [ADDRESS]\nTOEFL 100, GPA 3.8/4.0",
        counts(id_number=1, address=1),
    ),
    (
        "Visa (subclass 500) needs CAS; my application number is APP-778812 and my phone number is 0412 345 678.",
        "Visa (subclass 500) needs CAS; my application number is [ID_NUMBER] and my phone number is [PHONE].",
        counts(id_number=1, phone=1),
    ),
]


@pytest.mark.parametrize(("text", "expected", "found"), MIXED)
def test_mixed_messages(text: str, expected: str, found: dict[str, int]) -> None:
    assert redact(text) == (expected, found)


UNICODE = [
    (
        "我的邮箱是 wang.fang@163.com，电话13812345678，谢谢老师！",
        "我的邮箱是 [EMAIL]，电话[PHONE]，谢谢老师！",
        counts(email=1, phone=1),
    ),
    ("手机：１３８１２３４５６７８", "手机：[PHONE]", counts(phone=1)),  # full-width digits from a Chinese IME
    (
        "मेरा फ़ोन नंबर +91 98765 43210 है और ईमेल rahul@iitb.ac.in है।",
        "मेरा फ़ोन नंबर [PHONE] है और ईमेल [EMAIL] है।",
        counts(email=1, phone=1),
    ),
    (
        "Zoë Müller wohnt in der Hauptstraße 5, 10115 Berlin; François Dubois écrit à françois@école.fr.",
        "Zoë Müller wohnt in der [ADDRESS]; François Dubois écrit à [EMAIL].",
        counts(email=1, address=1),
    ),
    (
        "José Núñez: pasaporte nº X1234567 — ¿está bien?",
        "José Núñez: pasaporte nº [ID_NUMBER] — ¿está bien?",
        counts(id_number=1),
    ),
    ("北京大学 2025 年秋季入学，雅思 7.5 分", "北京大学 2025 年秋季入学，雅思 7.5 分", counts()),
]


@pytest.mark.parametrize(("text", "expected", "found"), UNICODE)
def test_unicode_around_personal_data_is_kept(text: str, expected: str, found: dict[str, int]) -> None:
    assert redact(text) == (expected, found)


@pytest.mark.parametrize(
    "text",
    [case[0] for case in EMAILS + PHONES + IDS + ADDRESSES] + [case[0] for case in MIXED + UNICODE],
)
def test_redacting_twice_changes_nothing(text: str) -> None:
    once, _ = redact(text)
    assert redact(once) == (once, counts())


def test_placeholders_are_the_documented_ones() -> None:
    assert PLACEHOLDERS == {"email": "[EMAIL]", "phone": "[PHONE]", "id_number": "[ID_NUMBER]", "address": "[ADDRESS]"}


def test_redact_many_keeps_order_and_sums_counts() -> None:
    texts = ["a@b.co and c@d.org", "IELTS 7.5", "+44 20 7946 0958, passport A1234567", "12 MG Road, Bangalore 560001"]
    redacted, found = redact_many(iter(texts))  # any iterable, read once
    assert redacted == ["[EMAIL] and [EMAIL]", "IELTS 7.5", "[PHONE], passport [ID_NUMBER]", "[ADDRESS]"]
    assert found == counts(email=2, phone=1, id_number=1, address=1)
    assert found == {kind: sum(redact(t)[1][kind] for t in texts) for kind in KINDS}


def test_redact_many_of_nothing() -> None:
    assert redact_many([]) == ([], counts())


def test_input_is_not_logged_or_kept(caplog: pytest.LogCaptureFixture) -> None:
    secret = "zz.unique.secret+42@example.org, +44 20 7946 0958, passport Q7654321"
    with caplog.at_level(logging.DEBUG):
        redacted, _ = redact(secret)
        redact_many([secret])
    assert redacted == "[EMAIL], [PHONE], passport [ID_NUMBER]"
    assert caplog.records == []
    # Nothing reachable from the module (its globals, and the closures and defaults of its functions) holds the input.
    reachable = list(vars(privacy).values())
    for value in list(reachable):
        if callable(value) and hasattr(value, "__code__"):
            reachable += [c.cell_contents for c in value.__closure__ or ()] + list(value.__defaults__ or ())
    assert not any(isinstance(v, str) and ("unique.secret" in v or "7946" in v) for v in reachable)
    assert not any(isinstance(v, (list, dict, set, tuple)) and "unique.secret" in repr(v) for v in reachable)


def test_import_uses_the_standard_library_only() -> None:
    script = (
        "import sys; before = set(sys.modules); import space.privacy; "
        "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
        "print(sorted(new - set(sys.stdlib_module_names) - {'space'}))"
    )
    result = subprocess.run([sys.executable, "-S", "-c", script], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
