"""Does an answer read as English? Decided by script first, then by a language identifier for Latin-script text.

1. **Script.** Letters outside the Latin script (Bengali, Devanagari, Arabic, Chinese, Cyrillic, ...) are counted;
   from a fifth of the letters up the answer is not English, and the script is named. No model is needed for that.
2. **Latin script.** Prose whose common English words (the, and, to, ...) are at least 15% of its words is English
   without asking a model: almost every answer, at the cost of a set lookup per word. Terse lists ("Required
   documents: 1) admission letter - original 2) passport ...") and other languages go to lingua
   (`lingua-language-detector`, whose models ship in its wheel), built once per process from the Latin-script
   languages students write, in low-accuracy mode (trigrams only, about 0.5 ms an answer).
3. **Hindi in Latin script.** lingua has no model for it and reads it as English (its content words are English:
   visa, passport, admission letter), so its function words (hai, ke, liye, aur, ...) are counted instead.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from functools import cache

SAMPLE_CHARS = 1200
"""Only an answer's opening is read: it is enough to tell the language."""
IDENTIFIER_CHARS = 400
"""What the identifier reads of it: its cost grows with the length (about 0.5 ms for 400 characters), its answer
does not change past a few sentences."""
MIN_WORDS = 20
"""Latin-script text shorter than this is not judged (too little to tell; the length rule covers short answers)."""
NON_LATIN_SHARE = 0.2
"""Share of letters outside the Latin script from which an answer is not English (a quoted word or name is less)."""
ENGLISH_SHARE = 0.15
"""Share of common English words from which Latin-script prose is English without the identifier: English prose
measures 0.2-0.4, other languages well under 0.1."""
HINDI_SHARE = 0.1
"""Share of Hindi function words from which Latin-script text is Hindi."""

ENGLISH_WORDS = frozenset("the and to of a in is for you your that with are on be this or as can it".split())
HINDI_LATIN_WORDS = frozenset(
    "hai hain ka ki ke ko se mein aur liye lie bhi nahi nahin kya kar karo karna karein kare hoga hogi honge hota "
    "hoti tha thi yeh woh aap aapko aapka aapke apna apne apni hum tum mujhe hume humein toh tak wala wali sakte "
    "sakta sakti chahiye lekin phir abhi bahut sabse pehle baad uske iske agar jab".split())
"""Frequent Hindi (and Urdu) function words as written in Latin script that are not English words."""
LATIN_LANGUAGES = ("ENGLISH", "GERMAN", "FRENCH", "SPANISH", "PORTUGUESE", "ITALIAN", "DUTCH", "SWEDISH", "BOKMAL",
                   "DANISH", "FINNISH", "POLISH", "CZECH", "ROMANIAN", "HUNGARIAN", "TURKISH", "INDONESIAN", "MALAY",
                   "TAGALOG", "VIETNAMESE", "SWAHILI", "YORUBA", "SOMALI", "ESTONIAN")
"""The languages lingua chooses between: fewer load faster and confuse less."""
ENGLISH_DOUBT = 0.2
"""lingua's confidence in English from which an answer it attributes to another language still passes."""

_LETTER = re.compile(r"[^\W\d_]")
_NON_LATIN_LETTER = re.compile(r"[^\W\d_\x00-\u024f\u1e00-\u1eff\u2c60-\u2c7f\ua720-\ua7ff]")


def answer_language(text: str) -> str | None:
    """None when `text` reads as English (or is too short to tell), else what it reads as: "Bengali script",
    "German", "Hindi in Latin script"."""
    sample = text[:SAMPLE_CHARS]
    if not sample.isascii():
        others = _NON_LATIN_LETTER.findall(sample)
        if len(others) >= 20 and len(others) >= NON_LATIN_SHARE * len(_LETTER.findall(sample)):
            script = Counter(unicodedata.name(ch, "OTHER").split()[0] for ch in others).most_common(1)[0][0]
            return ("Chinese" if script == "CJK" else script.capitalize()) + " script"
    words = sample.lower().split()
    if len(words) < MIN_WORDS:
        return None
    if not HINDI_LATIN_WORDS.isdisjoint(words) and \
            sum(map(HINDI_LATIN_WORDS.__contains__, words)) >= HINDI_SHARE * len(words):
        return "Hindi in Latin script"
    if sum(map(ENGLISH_WORDS.__contains__, words)) >= ENGLISH_SHARE * len(words):
        return None
    confidences = _detector().compute_language_confidence_values(sample[:IDENTIFIER_CHARS])
    top = confidences[0] if confidences else None
    if top is None or top.language.name == "ENGLISH":
        return None
    english = next((c.value for c in confidences if c.language.name == "ENGLISH"), 0.0)
    return None if english >= ENGLISH_DOUBT else top.language.name.capitalize()


@cache
def _detector():
    """lingua's detector, built once per process. Its models load lazily on first use, without the thread pool
    that preloading starts, so the audit can still fork its workers after using it."""
    from lingua import Language, LanguageDetectorBuilder

    return LanguageDetectorBuilder.from_languages(*(getattr(Language, name) for name in LATIN_LANGUAGES)) \
        .with_low_accuracy_mode().build()
