"""ARPAbet (CMU dictionary, pocketsphinx) <-> the IPA phonemes of the viseme table.

Recorded speech is aligned by pocketsphinx, whose US-English model speaks ARPAbet; the corpus and
the recogniser use the IPA symbols of `visemes.VISEMES` (espeak-ng's), so both kinds of corpus
share one vocabulary. Diphthongs become two symbols, as espeak-ng's do after `visemes.expand`.
"""
from __future__ import annotations

import re

# Stressed AH is the open-mid vowel of "but", unstressed the schwa of "about".
_VOWELS = {
    "AA": ["ɑ"], "AE": ["æ"], "AH": ["ʌ"], "AH0": ["ə"], "AO": ["ɔ"], "AW": ["a", "ʊ"], "AY": ["a", "ɪ"],
    "EH": ["ɛ"], "ER": ["ɚ"], "EY": ["e", "ɪ"], "IH": ["ɪ"], "IY": ["i"], "OW": ["o", "ʊ"], "OY": ["ɔ", "ɪ"],
    "UH": ["ʊ"], "UW": ["u"],
}
_CONSONANTS = {
    "B": "b", "CH": "tʃ", "D": "d", "DH": "ð", "F": "f", "G": "ɡ", "HH": "h", "JH": "dʒ", "K": "k", "L": "l",
    "M": "m", "N": "n", "NG": "ŋ", "P": "p", "R": "ɹ", "S": "s", "SH": "ʃ", "T": "t", "TH": "θ", "V": "v",
    "W": "w", "Y": "j", "Z": "z", "ZH": "ʒ",
}
# pocketsphinx's silence and filler phones (breath, noise, cough...) are silence for the face.
SILENT = {"SIL", "+NSN+", "+SPN+", "+BREATH+", "+COUGH+", "+LAUGH+", "+SMACK+", "+UM+", "+UH+"}


def to_ipa(phone: str) -> list[str]:
    """One ARPAbet phone (stress digit optional) -> IPA symbols of the viseme table; [] for silence."""
    if phone in SILENT or phone.startswith("+"):
        return []
    base = phone.rstrip("012")
    if base in _CONSONANTS:
        return [_CONSONANTS[base]]
    if phone == "AH0":
        return _VOWELS["AH0"]
    if base in _VOWELS:
        return _VOWELS[base]
    raise ValueError(f"unknown ARPAbet phone {phone!r}")


# IPA (espeak-ng, marks removed) -> ARPAbet, for words the dictionary lacks. Longest match first.
_FROM_IPA = {
    "aɪ": "AY", "aʊ": "AW", "eɪ": "EY", "oʊ": "OW", "əʊ": "OW", "ɔɪ": "OY", "tʃ": "CH", "dʒ": "JH", "ɪə": "IH R",
    "eə": "EH R", "ʊə": "UH R", "iː": "IY", "uː": "UW", "ɑː": "AA", "ɔː": "AO", "ɜː": "ER", "n̩": "N", "l̩": "L",
    "p": "P", "b": "B", "m": "M", "f": "F", "v": "V", "θ": "TH", "ð": "DH", "t": "T", "d": "D", "n": "N",
    "l": "L", "ɫ": "L", "s": "S", "z": "Z", "ʃ": "SH", "ʒ": "ZH", "ɹ": "R", "r": "R", "w": "W", "j": "Y",
    "k": "K", "ɡ": "G", "g": "G", "ŋ": "NG", "h": "HH", "ʔ": "T", "ɾ": "D", "x": "K",
    "i": "IY", "ɪ": "IH", "ᵻ": "IH", "e": "EY", "ɛ": "EH", "æ": "AE", "a": "AE", "ɑ": "AA", "ɒ": "AA",
    "ʌ": "AH", "ə": "AH", "ɐ": "AH", "ɚ": "ER", "ɜ": "ER", "ɔ": "AO", "o": "OW", "ʊ": "UH", "u": "UW",
}
_IPA_TOKEN = re.compile("|".join(sorted(map(re.escape, _FROM_IPA), key=len, reverse=True)))


def from_ipa(ipa: str) -> list[str]:
    """espeak-ng's IPA for a word -> ARPAbet phones (stress and other marks dropped)."""
    cleaned = re.sub("[ˈˌ'̃ʲ\u0361_-]", "", ipa)
    return [phone for token in _IPA_TOKEN.findall(cleaned) for phone in _FROM_IPA[token].split()]
