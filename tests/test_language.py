"""The audit's language rule (trainer/data/language.py): script first, then lingua for Latin-script text, on the kinds of
answers public study-abroad datasets hold."""

from __future__ import annotations

import pytest

from trainer.data.language import answer_language

TERSE_ENGLISH = [
    "Required documents for the visa:\n1) admission letter - original\n2) passport - valid 6 months beyond stay\n"
    "3) bank statement - last 3 months\n4) photos - 2, white background\n5) IELTS scorecard - original + copy\n"
    "6) tuition fee receipt - first year",
    "Checklist: SOP - 1 page max. LORs - 2 academic, 1 professional. CV - updated. Transcripts - attested copies. "
    "Passport - scanned bio page. GRE - optional. Deadline - 15 January. Portal - university website.",
    "Costs per year (approx.):\n- Tuition: GBP 18,000-25,000\n- Rent: GBP 7,000-9,000\n- Food: GBP 2,000\n"
    "- Transport: GBP 600\n- Books/supplies: GBP 500\n- IHS: GBP 776\n- Visa fee: GBP 490",
]
BENGALI = ("ভিসার জন্য আবেদন করতে আপনাকে প্রথমে বিশ্ববিদ্যালয় থেকে ভর্তির চিঠি নিতে হবে। তারপর ব্যাংক স্টেটমেন্ট এবং "
           "পাসপোর্ট প্রস্তুত রাখুন। সাক্ষাৎকারের আগে ফি অনলাইনে জমা দিন।")
MIXED_ENGLISH_BENGALI = ("For the student visa you need these documents. ভিসার জন্য আবেদন করতে আপনাকে প্রথমে "
                         "বিশ্ববিদ্যালয় থেকে ভর্তির চিঠি নিতে হবে। Then book the appointment and pay the fee online "
                         "before the interview.")
ENGLISH_QUOTING_BENGALI = ("In Bengali, thank you is ধন্যবাদ. For the student visa you need an admission letter, a "
                           "passport valid for six months, bank statements for the last three months and two photos "
                           "with a white background; book the appointment early.")
HINDI_LATIN = ("Aapko visa ke liye apply karna hoga. Pehle admission letter lo, phir bank statement aur passport ready "
               "rakho. Fees ka payment online hota hai, aur interview ke liye appointment book karo.")
HINDI_DEVANAGARI = ("वीज़ा के लिए आवेदन करने से पहले आपको विश्वविद्यालय से प्रवेश पत्र लेना होगा। "
                    "फिर बैंक स्टेटमेंट और पासपोर्ट तैयार रखें।")
GERMAN = ("Prüfen Sie die Zulassungsvoraussetzungen der Hochschule sorgfältig und bereiten Sie Ihre Zeugnisse, Ihren "
          "Lebenslauf sowie Ihr Motivationsschreiben rechtzeitig vor, damit Ihre Bewerbung vollständig ist.")
SPANISH = ("Para solicitar la visa de estudiante necesitas la carta de admisión de la universidad, un pasaporte "
           "vigente, extractos bancarios de los últimos meses y el comprobante de pago de la matrícula.")


@pytest.mark.parametrize("text", TERSE_ENGLISH + [ENGLISH_QUOTING_BENGALI])
def test_terse_english_and_english_quoting_a_word_read_as_english(text):
    assert answer_language(text) is None


@pytest.mark.parametrize(("text", "language"), [
    (BENGALI, "Bengali script"),
    (MIXED_ENGLISH_BENGALI, "Bengali script"),
    (HINDI_DEVANAGARI, "Devanagari script"),
    (HINDI_LATIN, "Hindi in Latin script"),
    (GERMAN, "German"),
    (SPANISH, "Spanish"),
])
def test_other_languages_are_named(text, language):
    assert answer_language(text) == language


def test_the_audit_fails_only_the_answers_that_are_not_english():
    from trainer.kb.audit import Auditor

    def flags(answer):
        messages = [{"role": "user", "content": "Which documents do I need for the visa?"},
                    {"role": "assistant", "content": answer}]
        return [str(f) for f in Auditor().audit([messages]).rows[0].flags if f.rule == "language"]

    assert [flags(t) for t in TERSE_ENGLISH] == [[], [], []]
    assert flags(MIXED_ENGLISH_BENGALI) == [
        "fail:language (message 2): the answer reads as Bengali script, not English"]
    assert flags(HINDI_LATIN) == ["fail:language (message 2): the answer reads as Hindi in Latin script, not English"]
