"""Admission (streams/worker/admission.py) without a broker: the same Processor the fraud lane
drives, from size check and decode to redaction, validation and dead letters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from schemas.codec import make_codec
from streams.config import Settings
from streams.worker.admission import Admitted, Output, Processor, Source
from tests.factories import transaction

TOPIC = "rakshit.transactions"


@pytest.fixture
def processor() -> Processor:
    return Processor(Settings(max_record_bytes=2048), make_codec(None))


def source(offset: int = 0) -> Source:
    return Source(TOPIC, 0, offset, b"k")


def admit(processor: Processor, tx: dict[str, object]) -> Admitted | Output:
    raw = processor.codec.encode("transaction", tx, topic=TOPIC)
    return processor.admit(raw, source(), "transaction")


def reason_of(processor: Processor, out: Admitted | Output) -> str:
    assert isinstance(out, Output), "expected a dead letter"
    return str(processor.codec.decode(out.value, topic=out.topic, expect="dead_letter")
               .record["reason"])


def test_good_transaction_is_admitted(processor: Processor) -> None:
    out = admit(processor, transaction(1))
    assert isinstance(out, Admitted)
    assert out.record["amount"] == Decimal("42.50")
    # Zero-amount authorizations are card checks, not bad input (the handbook data has them too).
    assert isinstance(admit(processor, transaction(2, amount="0.00")), Admitted)


@pytest.mark.parametrize(("change", "reason"), [
    ({"amount": Decimal("-1.00")}, "invalid_value"),
    ({"amount": Decimal("5000000.00")}, "invalid_value"),
    ({"currency": "euro"}, "invalid_value"),
    ({"country": "Germany"}, "invalid_value"),
    ({"card_token": " "}, "invalid_value"),
    ({"geo": {"lat": 123.0, "lon": 0.0}}, "invalid_value"),
    ({"event_time": datetime.now(UTC) + timedelta(hours=1)}, "future_event_time"),
    ({"event_time": datetime(1990, 1, 1, tzinfo=UTC)}, "invalid_value"),
    ({"merchant_name": "x" * 3000}, "oversized"),
])
def test_absurd_values_are_dead_lettered(processor: Processor, change: dict[str, object],
                                         reason: str) -> None:
    assert reason_of(processor, admit(processor, transaction(1, **change))) == reason


def test_card_number_in_a_string_field_is_redacted_and_counted(processor: Processor) -> None:
    out = admit(processor, transaction(1, merchant_name="pay 4111 1111 1111 1111 now"))
    assert isinstance(out, Admitted)
    assert out.pan_redactions == 1
    assert "4111" not in out.record["merchant_name"]


def test_dead_letter_keeps_the_whole_record_with_card_data_masked(processor: Processor) -> None:
    raw = b"not avro 4111111111111111 trailing"
    out = processor.admit(raw, source(7), "transaction")
    assert isinstance(out, Output)
    letter = processor.codec.decode(out.value, topic=out.topic, expect="dead_letter").record
    assert letter["reason"] == "undecodable"
    assert letter["source_offset"] == 7 and letter["source_topic"] == TOPIC
    assert len(letter["original"]) == len(raw) and b"4111111111111111" not in letter["original"]
    assert letter["original"].startswith(b"not avro ") and letter["pan_redactions"] == 1


def test_the_demo_bad_records_each_land_with_the_reason_they_claim(processor: Processor) -> None:
    from streams.simulator.bad_input import bad_records

    template = transaction(1)
    seen = set()
    for i, (reason, data) in enumerate(bad_records(template, processor.codec, TOPIC, 21, seed=3)):
        assert reason_of(processor, processor.admit(data, source(i), "transaction")) == reason
        seen.add(reason)
    assert len(seen) == 7


def test_a_currency_without_a_reference_rate_is_refused(processor: Processor) -> None:
    # Amount features are computed in euros; an amount we cannot convert would mislead the model.
    assert reason_of(processor, admit(processor, transaction(1, currency="XAU"))) == "invalid_value"


def test_verdict_id_is_the_uuid5_of_the_transaction_id() -> None:
    import uuid

    from streams.worker.admission import VERDICT_NAMESPACE, verdict_id

    for tx_id in ("tx-1", "hb-872795", "é-unicode", ""):
        assert verdict_id(tx_id) == str(uuid.uuid5(VERDICT_NAMESPACE, tx_id))
