"""One scrubber for free text: masks resident ID numbers and mobile phone numbers.

Logs use it on every line (``shared.logging``); services use it on free text a user typed
(a reason, a note, a pause reason) before that text enters an event, so personal data
never reaches Kafka or a notice.

It is deliberately greedy: masking a harmless number is cheap, letting a real one through
is not. It finds numbers written the ways people write them: ``640104199001018143`` and a
trailing ``x``/``X``, groups split by spaces or dashes (``640104 19900101 8143``,
``138-1234-5678``, ``138 1234 5678``), a ``+86`` / ``0086`` / ``86`` prefix, full-width
digits (``１３８１２３４５６７８``) and other Unicode decimal digits, and old 15-digit ID numbers.
"""

from __future__ import annotations

import re
import unicodedata

ID_MASK = "[id-number]"
PHONE_MASK = "[phone]"


class _Folding(dict):
    """``str.translate`` table mapping look-alike characters to ASCII one for one (so a match's
    position in the folded text is its position in the original): every Unicode decimal digit
    to its ASCII digit, full-width X, plus, hyphen and the ideographic space to theirs."""

    def __missing__(self, code: int) -> int:
        ch = chr(code)
        digit = unicodedata.decimal(ch, None)
        if digit is not None:
            folded = ord(str(digit))
        else:
            normal = unicodedata.normalize("NFKC", ch)
            folded = ord(normal) if len(normal) == 1 and normal in "Xx+-() " else code
        if ch in "\u2010\u2011\u2012\u2013\u2014\u2212":  # the dashes people type between digit groups
            folded = ord("-")
        self[code] = folded
        return folded


_FOLD = _Folding()

_SEP = r"[ \-.\u00b7\t]?"  # at most one separator between two digits
# 18-character resident ID (17 digits and a digit or X), with separators anywhere; or the old 15 digits.
_ID_NUMBER = re.compile(
    rf"(?<![0-9])[0-9](?:{_SEP}[0-9]){{16}}{_SEP}[0-9Xx](?![0-9A-Za-z])"
    r"|(?<![0-9])[0-9]{15}(?![0-9A-Za-z])"
)
# Mainland mobile: 1[3-9] and 9 more digits, grouped any way, with an optional country prefix.
_PHONE = re.compile(rf"(?<![0-9])(?:(?:\(?(?:\+|00)\s?86\)?|86)[ \-]?)?1{_SEP}[3-9](?:{_SEP}[0-9]){{9}}(?![0-9])")


def scrub_text(text: str) -> str:
    """``text`` with every ID number replaced by ``[id-number]`` and every phone number by ``[phone]``."""
    if not text:
        return text
    folded = text if text.isascii() else text.translate(_FOLD)
    spans = [(m.start(), m.end(), ID_MASK) for m in _ID_NUMBER.finditer(folded)]
    taken = _ID_NUMBER.sub(lambda m: "\0" * (m.end() - m.start()), folded)
    spans += [(m.start(), m.end(), PHONE_MASK) for m in _PHONE.finditer(taken)]
    if not spans:
        return text
    out, last = [], 0
    for start, end, mask in sorted(spans):
        out.append(text[last:start])
        out.append(mask)
        last = end
    out.append(text[last:])
    return "".join(out)
