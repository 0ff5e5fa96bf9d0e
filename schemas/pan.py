"""Card-number (PAN) redaction.

A PAN must never reach a topic, log, file or metric, yet gateways put card numbers in free-text
fields and broken producers send raw payloads we must keep for debugging. Redaction therefore runs
on every string we keep and on raw bytes before they are dead-lettered.

A card number is 13-19 digits that pass the Luhn check, possibly typed in groups separated by a
single space or dash. Digits are replaced one-for-one with ``*`` (separators kept) so the length
never changes: that keeps byte offsets in Avro framing valid and shows a reader where the number
was. A contiguous run of more than 19 digits is not card-shaped (ids, hashes) and is left alone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["has_digit_run", "luhn_valid", "may_hold_card_number", "redact_bytes", "redact_record",
           "redact_text"]

_MIN_DIGITS = 13
_MAX_DIGITS = 19

# A maximal run of digits joined by single separators with at least 13 digits in it. Every
# candidate card number lies inside such a run, and text without one (the common case) costs a
# single C-level scan. The pattern cannot backtrack badly: a separator is never a digit.
_RUN = re.compile(r"\d(?:[ -]?\d){12,}")
_RUN_BYTES = re.compile(rb"[0-9](?:[ -]?[0-9]){12,}")
_GROUP = re.compile(r"\d+")
# A superset of _RUN over UTF-8 bytes: an ASCII digit or any multi-byte character (every
# non-ASCII decimal digit is one) in place of each digit. Bytes without such a run hold no string
# with a card number in it, whatever their framing, so one scan can stand in for a field walk.
_UTF8_DIGITISH = rb"(?:[0-9]|[\xc2-\xf4][\x80-\xbf]{1,3})"
_RUN_UTF8 = re.compile(_UTF8_DIGITISH + rb"(?:[ -]?" + _UTF8_DIGITISH + rb"){12,}")
# Every byte _RUN_UTF8 can match kept as itself, every other byte mapped to NUL (not matchable).
_MATCHABLE = {*b"0123456789 -", *range(0x80, 0xC0), *range(0xC2, 0xF5)}
_RUN_UTF8_BYTES = bytes(b if b in _MATCHABLE else 0 for b in range(256))
_STRETCH = re.compile(rb"[^\x00]{%d,}" % _MIN_DIGITS)

# Luhn: every second digit from the right is doubled, and a doubled digit above 9 has 9 taken off.
_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)


def luhn_valid(digits: str) -> bool:
    """True when ``digits`` (decimal digits only, no separators) passes the Luhn check."""
    if not digits or not digits.isdecimal():
        return False
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        total += _DOUBLED[value] if position % 2 else value
    return total % 10 == 0


def _redact_run(run: str) -> tuple[str, int]:
    """Redact the card numbers inside one separator-joined digit run.

    The run is split into its contiguous digit groups and every window of consecutive groups
    holding 13-19 digits is a candidate. Checking only the whole run would miss a card number
    typed next to other digits ("order 12 4111 1111 1111 1111"), and checking every digit
    substring would redact fragments of long ids; group-aligned windows sit between the two.
    Scanning left to right and taking the longest valid window from each start redacts every
    candidate at most once, so the count is a count of card numbers.
    """
    groups = [(m.start(), m.end()) for m in _GROUP.finditer(run)]
    marked: list[tuple[int, int]] = []
    count = 0
    i = 0
    while i < len(groups):
        best = -1
        total = 0
        for j in range(i, len(groups)):
            total += groups[j][1] - groups[j][0]
            if total > _MAX_DIGITS:
                break
            if total >= _MIN_DIGITS:
                digits = "".join(run[s:e] for s, e in groups[i : j + 1])
                if luhn_valid(digits):
                    best = j
        if best < 0:
            i += 1
            continue
        marked.extend(groups[i : best + 1])
        count += 1
        i = best + 1
    if not count:
        return run, 0
    chars = list(run)
    for start, end in marked:
        chars[start:end] = "*" * (end - start)
    return "".join(chars), count


def has_digit_run(text: str) -> bool:
    """Whether ``text`` holds a run of 13+ digits a card number could hide in (one C scan)."""
    return _RUN.search(text) is not None


def redact_text(text: str) -> tuple[str, int]:
    """Replace every card number in ``text`` with ``*`` per digit; return the text and the count."""
    if _RUN.search(text) is None:
        return text, 0
    parts: list[str] = []
    last = 0
    count = 0
    for match in _RUN.finditer(text):
        redacted, found = _redact_run(match.group())
        if found:
            parts.append(text[last : match.start()])
            parts.append(redacted)
            last = match.end()
            count += found
    if not count:
        return text, 0
    parts.append(text[last:])
    return "".join(parts), count


def may_hold_card_number(encoded: bytes) -> bool:
    """False when no string encoded verbatim (UTF-8) in ``encoded`` can hold a card number: Avro
    keeps string bodies as their UTF-8 bytes, so this bounds every field at once. JSON escapes
    (``\\u0034``) hide digits from it: use it only on binary encodings.

    A match can only lie within bytes the pattern can match at all, so the backtracking pattern
    runs only on stretches of 13 or more such bytes (found by one translate and a plain scan):
    a fifth of the time on a transaction, which every record admitted pays."""
    for stretch in _STRETCH.finditer(encoded.translate(_RUN_UTF8_BYTES)):
        if _RUN_UTF8.search(encoded, stretch.start(), stretch.end()) is not None:
            return True
    return False


def redact_bytes(data: bytes) -> tuple[bytes, int]:
    """Redact ASCII card numbers in raw bytes, keeping the length so framing offsets still hold.

    Latin-1 maps each byte to one code point and back, so the text rules apply byte for byte
    (no Latin-1 character other than 0-9 is a decimal digit).
    """
    if _RUN_BYTES.search(data) is None:
        return bytes(data), 0
    text, count = redact_text(data.decode("latin-1"))
    return text.encode("latin-1"), count


def redact_record(record: Any) -> tuple[Any, int]:
    """Redact every string (and bytes value) in a nested structure of dicts, lists and tuples.

    Returns a new structure, never the caller's, so redacting a record before logging it cannot
    change what the pipeline goes on to process. Mapping keys are redacted too: a map keyed by
    card number is still a leak.
    """
    if isinstance(record, str):
        return redact_text(record)
    if isinstance(record, bytes | bytearray):
        redacted, count = redact_bytes(bytes(record))
        return (bytearray(redacted) if isinstance(record, bytearray) else redacted), count
    if isinstance(record, Mapping):
        out: dict[Any, Any] = {}
        total = 0
        for key, value in record.items():
            new_key, key_count = redact_record(key) if isinstance(key, str) else (key, 0)
            new_value, value_count = redact_record(value)
            out[new_key] = new_value
            total += key_count + value_count
        return out, total
    if isinstance(record, list | tuple):
        items: list[Any] = []
        total = 0
        for item in record:
            new_item, item_count = redact_record(item)
            items.append(new_item)
            total += item_count
        return (tuple(items) if isinstance(record, tuple) else items), total
    return record, 0
