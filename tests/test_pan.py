"""Card-number redaction: known test PANs, near misses, and a property over arbitrary text."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime
from decimal import Decimal

import fastavro
from hypothesis import example, given, settings
from hypothesis import strategies as st

from schemas.codec import SingleObjectCodec, load_schema
from schemas.pan import luhn_valid, may_hold_card_number, redact_bytes, redact_record, redact_text

# Network test numbers as people type them: Visa, Mastercard (spaced), Amex, Discover (dashed).
TEST_PANS = ["4111111111111111", "5500 0000 0000 0004", "340000000000009", "6011-0000-0000-0004"]


def reference_luhn(digits: str) -> bool:
    """Luhn written the textbook way, independent of the implementation under test."""
    doubled = "".join(str(int(d) * 2) if i % 2 else d for i, d in enumerate(reversed(digits)))
    return sum(int(c) for c in doubled) % 10 == 0


def masked(text: str) -> str:
    return re.sub(r"\d", "*", text)


def first_with(start: int, valid: bool) -> str:
    """The first number from ``start`` whose Luhn validity is ``valid``."""
    n = start
    while reference_luhn(str(n)) != valid:
        n += 1
    return str(n)


def leftover_pans(text: str) -> list[str]:
    runs = re.findall(r"\d+", text)
    return [r for r in runs if 13 <= len(r) <= 19 and reference_luhn(r)]


def test_luhn_agrees_with_known_numbers() -> None:
    for pan in TEST_PANS:
        assert luhn_valid(re.sub(r"\D", "", pan))
    assert not luhn_valid("4111111111111112")
    assert not luhn_valid("")
    assert not luhn_valid("4111 1111")  # separators are not digits


@given(st.text(alphabet="0123456789", min_size=1, max_size=25))
def test_luhn_matches_reference(digits: str) -> None:
    assert luhn_valid(digits) == reference_luhn(digits)


def test_each_test_pan_is_redacted_in_text() -> None:
    for pan in TEST_PANS:
        text, count = redact_text(f"card {pan} declined")
        assert (text, count) == (f"card {masked(pan)} declined", 1)


def test_several_pans_are_counted() -> None:
    text, count = redact_text("; ".join(TEST_PANS))
    assert count == len(TEST_PANS)
    assert text == "; ".join(masked(p) for p in TEST_PANS)


def test_near_misses_are_left_alone() -> None:
    invalid16 = first_with(4111111111111112, valid=False)
    long_run = "4111111111111111" + "0000"  # 20 digits: an id, not a card
    invalid_ts = first_with(1741944413589, valid=False)
    twelve = first_with(411111111111, valid=True)  # Luhn-valid but too short
    for text in (invalid16, long_run, f"at {invalid_ts}", f"{twelve}", "4111 1111  1111 1111"):
        assert redact_text(text) == (text, 0)


def test_luhn_valid_timestamp_is_redacted_as_accepted() -> None:
    valid_ts = first_with(1741944413589, valid=True)
    assert redact_text(f"at {valid_ts}") == (f"at {masked(valid_ts)}", 1)


def test_pan_typed_next_to_other_digits_is_still_found() -> None:
    for text in ("order 12 4111 1111 1111 1111", "4111111111111111 123", "ref4111111111111111x"):
        redacted, count = redact_text(text)
        assert count == 1
        assert leftover_pans(redacted) == [] and "4111" not in redacted


def test_bytes_are_redacted_in_place_keeping_length() -> None:
    data = b"\x00\xc3junk " + b" | ".join(p.encode() for p in TEST_PANS) + b"\xff\x10"
    redacted, count = redact_bytes(data)
    assert count == len(TEST_PANS)
    assert len(redacted) == len(data)
    assert redacted == re.sub(rb"\d", b"*", data)
    assert redact_bytes(b"\x01\x02 no digits") == (b"\x01\x02 no digits", 0)


def test_redacted_avro_bytes_still_decode() -> None:
    """Same-length redaction keeps the framing, so a dead letter stays readable."""
    record = {
        "transaction_id": "t-1",
        "card_token": "tok_1",
        "customer_id": "c-1",
        "merchant_id": "m-1",
        "terminal_id": "term-1",
        "merchant_name": "paid with 4111-1111-1111-1111 thanks",
        "mcc": None,
        "amount": Decimal("10.00"),
        "currency": "EUR",
        "country": "DE",
        "geo": None,
        "device_id": None,
        "channel": "ECOMMERCE",
        "issuer_bin": "411111",
        "issuer_id": "iss-1",
        "event_time": datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
    }
    data = SingleObjectCodec().encode("transaction", record, topic="t")
    redacted, count = redact_bytes(data)
    assert count == 1
    body = io.BytesIO(redacted[10:])
    got = fastavro.schemaless_reader(body, load_schema("transaction"), None)
    assert isinstance(got, dict)
    assert got["merchant_name"] == "paid with ****-****-****-**** thanks"


def test_nested_records_are_redacted_without_touching_the_input() -> None:
    record = {
        "note": f"customer read out {TEST_PANS[0]}",
        "items": [{"memo": TEST_PANS[1]}, (TEST_PANS[2], 7)],
        "raw": TEST_PANS[3].encode(),
        TEST_PANS[0]: "keyed by card",
        "amount": Decimal("3.50"),
        "safe": "tok_abc 12345",
    }
    before = repr(record)
    redacted, count = redact_record(record)
    assert count == 5
    assert repr(record) == before
    assert redacted == {
        "note": f"customer read out {masked(TEST_PANS[0])}",
        "items": [{"memo": masked(TEST_PANS[1])}, (masked(TEST_PANS[2]), 7)],
        "raw": masked(TEST_PANS[3]).encode(),
        masked(TEST_PANS[0]): "keyed by card",
        "amount": Decimal("3.50"),
        "safe": "tok_abc 12345",
    }


texts = st.lists(
    st.one_of(
        st.text(alphabet="0123456789 -ab", max_size=30),
        st.sampled_from(TEST_PANS),
        st.text(max_size=10),
    ),
    max_size=8,
).map("".join)


@given(texts)
@example("4111111111111111 4111111111111111")
@example("1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 4111111111111111")
def test_no_luhn_valid_run_survives(text: str) -> None:
    redacted, count = redact_text(text)
    assert leftover_pans(redacted) == []
    assert len(redacted) == len(text)
    for before, after in zip(text, redacted, strict=True):
        assert after == before or (after == "*" and before.isdecimal())
    assert (count == 0) == (redacted == text)


@given(texts.map(lambda t: t.encode("ascii", "replace")))
def test_bytes_match_text_redaction(data: bytes) -> None:
    redacted, count = redact_bytes(data)
    text, text_count = redact_text(data.decode("ascii"))
    assert (redacted, count) == (text.encode("ascii"), text_count)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=12), st.sampled_from(
    [b"4111 1111 1111 1111", b"4111-1111-1111-111", ("\uff14" + "\uff11" * 12).encode(), b" ", b"-",
     b"\x00", b"\xc3"])), max_size=12))
def test_the_fast_card_number_scan_finds_exactly_what_the_full_pattern_finds(
        parts: list[bytes]) -> None:
    from schemas.pan import _RUN_UTF8

    data = b"".join(parts)
    assert may_hold_card_number(data) == (_RUN_UTF8.search(data) is not None)
