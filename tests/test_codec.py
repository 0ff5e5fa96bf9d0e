"""Codec behaviour: round trips, schema evolution, and every DecodeError reason.

No broker: Confluent tests run against confluent-kafka's in-process mock:// registry.
"""

from __future__ import annotations

import io
import json
import pickle
import re
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any, get_args

import fastavro
import pytest
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry.error import SchemaRegistryError
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.clock import to_millis
from schemas.codec import (
    SCHEMA_DIR,
    Codec,
    ConfluentCodec,
    DecodeError,
    DecodeReason,
    EncodeError,
    SingleObjectCodec,
    load_schema,
    make_codec,
    schema_names,
)

REASONS = set(get_args(DecodeReason))
T0 = datetime(2025, 3, 14, 9, 26, 53, 589000, tzinfo=UTC)
TOPIC = "rakshit.transactions"
SECRET = "Ravi Kumar 4111 1111 1111 1111"


def transaction(**changes: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "transaction_id": "txn-000017",
        "card_token": "tok_9f2c1ab7",
        "customer_id": "cust-3310",
        "merchant_id": "m-grocer-12",
        "terminal_id": "term-0042",
        "merchant_name": "Sharma General Store",
        "mcc": "5411",
        "amount": Decimal("1249.50"),
        "currency": "INR",
        "country": "IN",
        "geo": {"lat": 19.076, "lon": 72.8777},
        "device_id": None,
        "channel": "POS",
        "issuer_bin": "45717360",
        "issuer_id": "issuer-hdfc",
        "event_time": T0,
    }
    record.update(changes)
    return record


RECORDS: dict[str, Callable[[], dict[str, Any]]] = {
    "transaction": transaction,
    "authorization_outcome": lambda: {
        "transaction_id": "txn-000017",
        "card_token": "tok_9f2c1ab7",
        "route": "acq-b",
        "issuer_id": "issuer-hdfc",
        "result": "SOFT_DECLINE",
        "response_code": "1A",
        "latency_ms": 412,
        "attempt": 2,
        "event_time": T0,
    },
    "verdict": lambda: {
        "verdict_id": "v-88",
        "transaction_id": "txn-000017",
        "card_token": "tok_9f2c1ab7",
        "terminal_id": "term-0042",
        "merchant_id": "mer-0007",
        "device_id": "dev_3fa1",
        "decision": "REVIEW",
        "score": 0.731,
        "model_version": "lgbm-2025-03-01+rules-14",
        "arm": "CHALLENGER",
        "reasons": [
            {"feature": "amount_vs_card_p95", "value": 4.2, "contribution": 0.31},
            {"feature": "new_device", "value": 1.0, "contribution": 0.12},
        ],
        "rules_fired": [{"rule_id": "R-velocity-5m", "reason": "6 attempts in 5 minutes"}],
        "guardrails": [{"name": "max_decline_rate", "passed": True, "detail": "2.1% < 5%"}],
        "fallbacks": ["feature_store_timeout"],
        "customer_message": "We need to confirm this payment with you.",
        "processing_latency_ms": 7.25,
        "transaction_time": T0,
        "decided_at": T0 + timedelta(milliseconds=9),
        "is_override": True,
        "overrides_verdict_id": "v-87",
        "decided_by": "analyst-17",
        "features": {"card_velocity_1h": 3.0, "amount": 42.5},
        "shadow": {"model_version": "1.1.0", "score": 0.31, "fallbacks": []},
        "thresholds": {"review": 0.62, "decline": 0.9, "tier": "normal",
                       "adjustments": ["review queue 130% full: review threshold raised"]},
    },
    "outcome_batch": lambda: {"items": [b"\xc3\x01opaque-outcome-1", b"\xc3\x01opaque-2"]},
    "scoring_event": lambda: {"body": {
        "transaction": transaction(),
        "card_features": {"card_velocity_1h": 3.0},
        "card_vector": [1.0, -0.5, 1e300, 0.0],
        "card_amount_history": [{"t_ms": 1_500_000_000_000, "transaction_id": "txn-000016",
                                 "amount": 9_950.0, "currency": "USD"}],
        "card_state_stale_s": None,
        "received_at_ms": 1.5e12,
        "source_timestamp_ms": 1.5e12,
        "decided_from": {"0": 41, "2": 7},
    }},
    "label": lambda: {
        "transaction_id": "txn-000017",
        "card_token": "tok_9f2c1ab7",
        "terminal_id": "term-0042",
        "merchant_id": "mer-0007",
        "device_id": None,
        "label": "CHARGEBACK",
        "fraud_scenario": "card_not_present",
        "transaction_time": T0,
        "known_at": T0 + timedelta(days=23),
        "source": "ISSUER",
    },
    "hypothesis": lambda: {
        "hypothesis_id": "h-acq-b-hdfc-1",
        "status": "OPEN",
        "route": "acq-b",
        "issuer_id": "issuer-hdfc",
        "scope": "ROUTE_ISSUER",
        "suspected_cause": "ROUTE_DEGRADED",
        "confidence": 0.93,
        "confidence_meaning": "posterior probability the success rate fell below baseline",
        "evidence": {
            "attempts": 1840,
            "successes": 1302,
            "baseline_rate": 0.91,
            "observed_rate": 0.7076,
            "statistic": 12.4,
            "threshold": 5.0,
            "p95_latency_ms": 2310.0,
        },
        "since": T0 - timedelta(minutes=4),
        "created_at": T0,
    },
    "experiment": lambda: {
        "experiment_id": "exp-19",
        "hypothesis_id": "h-acq-b-hdfc-1",
        "step": "OBSERVATION",
        "issuer_id": "issuer-hdfc",
        "from_route": "acq-b",
        "to_route": "acq-c",
        "share": 0.1,
        "guardrail": None,
        "arms": [
            {"route": "acq-b", "attempts": 900, "successes": 640, "rate": 0.7111},
            {"route": "acq-c", "attempts": 100, "successes": 93, "rate": 0.93},
        ],
        "statistic": 4.8,
        "reason": "probe arm ahead; waiting for 200 attempts",
        "at": T0,
    },
    "routing_policy": lambda: {
        "issuer_id": "issuer-hdfc",
        "version": 42,
        "weights": [{"route": "acq-b", "weight": 0.9}, {"route": "acq-c", "weight": 0.1}],
        "reason": "experiment exp-19 expanded",
        "experiment_id": "exp-19",
        "updated_at": T0,
    },
    "case": lambda: {
        "case_id": "case-501",
        "transaction_id": "txn-000017",
        "card_token": "tok_9f2c1ab7",
        "status": "RESOLVED",
        "priority": 2,
        "due_at": T0 + timedelta(hours=4),
        "assignee": "analyst-17",
        "resolution": "FALSE_POSITIVE",
        "reason": "customer confirmed by phone",
        "opened_by": "REVIEW_VERDICT",
        "verdict_id": "v-87",
        "updated_at": T0 + timedelta(hours=1),
        "version": 3,
    },
    "dead_letter": lambda: {
        "source_topic": TOPIC,
        "source_partition": 3,
        "source_offset": 918273,
        "source_key": b"tok_9f2c1ab7",
        "original": b"\xc3\x01\x00garbage",
        "reason": "unknown_schema",
        "error": "no known schema has fingerprint 0011223344556677",
        "pan_redactions": 0,
        "failed_at": T0,
        "original_size": 11,
        "expected_schema": "transaction",
    },
    "audit": lambda: {
        "audit_id": "aud-5be2c0d41f7a9e3384aa",
        "occurred_at": T0 + timedelta(minutes=12),
        "actor": "analyst-17",
        "role": "ANALYST",
        "action": "RESOLVE",
        "outcome": "REFUSED",
        "refusal": "FOUR_EYES",
        "reason": "customer confirmed the purchase by phone",
        "detail": "releasing a guardrail-blocked payment needs a second, different analyst",
        "case_id": "case-v-88",
        "transaction_id": "txn-000017",
        "card_token": "tok_9f2c1ab7",
        "status_before": "CLAIMED",
        "status_after": "CLAIMED",
        "case_version": 4,
        "resolution": "FALSE_POSITIVE",
        "verdict_id": "v-88",
        "override_verdict_id": None,
        "whitelist_until": T0 + timedelta(days=7),
    },
    "notification": lambda: {
        "notification_id": "case-v-88-v5-payment_approved",
        "transaction_id": "txn-000017",
        "card_token": "tok_9f2c1ab7",
        "kind": "PAYMENT_APPROVED",
        "message": "We have checked your payment and approved it. You can try it again now.",
        "case_id": "case-v-88",
        "verdict_id": "case-v-88-v5",
        "created_at": T0 + timedelta(minutes=14),
    },
    "evaluation_request": lambda: {
        "transaction_id": "txn-000017",
        "verdict_id": "v-88",
        "score": 0.83,
        "decision": "REVIEW",
        "model_version": "1.4.0",
        "features": {"TX_AMOUNT": 412.5, "CUSTOMER_ID_NB_TX_1DAY_WINDOW": 3.0},
        "failures": ["evaluation_failed"],
        "queued_at": T0 + timedelta(minutes=1),
    },
    "review_queue": lambda: {"depth": 412, "measured_at": T0 + timedelta(seconds=3)},
    "model_quality": lambda: {"partition": 4, "updated_at": T0 + timedelta(seconds=9),
                              "scores": [0.91, 0.12, 0.47], "frauds": [True, False, False],
                              "flagged": [True, False, True], "labels_recorded": 1_234,
                              "feedback_genuine": 3, "feedback_total": 57},
    "whitelist": lambda: {
        "card_token": "tok_9f2c1ab7",
        "since": T0 + timedelta(minutes=20),
        "until": T0 + timedelta(days=14),
        "actor": "analyst-17",
        "reason": "cardholder travelling; confirmed by phone",
    },
    "case_command": lambda: {
        "command_id": "cmd-2025-03-14-0042",
        "command": "RESOLVE",
        "actor": "analyst-17",
        "role": "ANALYST",
        "reason": "cardholder confirmed by phone",
        "case_id": "case-v-88",
        "expected_version": 3,
        "resolution": "FALSE_POSITIVE",
        "card_token": None,
        "until": None,
        "transaction_id": None,
        "verdict": None,
        "requested_at": T0 + timedelta(minutes=11),
    },
}


@pytest.fixture(params=["single_object", "confluent"])
def codec(request: pytest.FixtureRequest) -> Codec:
    return SingleObjectCodec() if request.param == "single_object" else ConfluentCodec("mock://t")


def raw_schema(name: str) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads((SCHEMA_DIR / f"{name}.avsc").read_text())
    return parsed


def with_field(schema: dict[str, Any], field: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "fields": [*schema["fields"], field]}


def without_field(schema: dict[str, Any], name: str) -> dict[str, Any]:
    return {**schema, "fields": [f for f in schema["fields"] if f["name"] != name]}


def retyped(schema: dict[str, Any], name: str, avro_type: Any) -> dict[str, Any]:
    fields = [{**f, "type": avro_type} if f["name"] == name else f for f in schema["fields"]]
    return {**schema, "fields": fields}


NOT_A_PAN = {"pan_redactions"}  # a count of redacted card numbers
LOYALTY = {"name": "loyalty_id", "type": ["null", "string"], "default": None}


@pytest.fixture
def evolved_dir(tmp_path: Path) -> Path:
    """A copy of the schema folder where Transaction is v1.1 (one added optional field)."""
    for path in SCHEMA_DIR.glob("*.avsc"):
        shutil.copy(path, tmp_path / path.name)
    evolved = with_field(raw_schema("transaction"), LOYALTY)
    (tmp_path / "transaction.avsc").write_text(json.dumps(evolved))
    return tmp_path


def avro_body(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema, named_schemas={}), record)
    return out.getvalue()


def crc64_avro(data: bytes) -> int:
    """CRC-64-AVRO exactly as the Avro specification writes it, to check the header."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


def nodes(schema: Any) -> Iterator[tuple[str, Any]]:
    """Every (kind, node) in a schema: kind is "field" for record fields, else "type"."""
    if isinstance(schema, list):
        for branch in schema:
            yield from nodes(branch)
    elif isinstance(schema, dict):
        yield "type", schema
        for field in schema.get("fields", []):
            yield "field", field
            yield from nodes(field["type"])
        for key in ("items", "values"):
            yield from nodes(schema.get(key))


# --- schemas -------------------------------------------------------------------------------


def test_every_topic_schema_is_present_and_has_a_realistic_fixture() -> None:
    assert set(schema_names()) == set(RECORDS)
    assert schema_names() == [p.stem for p in sorted(SCHEMA_DIR.glob("*.avsc"))]


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_schema_follows_house_style(name: str) -> None:
    raw = raw_schema(name)
    assert raw["namespace"] == "pay.rakshit.v1"
    assert raw["doc"]
    assert load_schema(name)["name"] == f"pay.rakshit.v1.{raw['name']}"
    for kind, node in nodes(raw):
        if kind == "field":
            looks_like_pan = re.search(r"(^|_)pan($|_)|card_?num|account_?num", node["name"])
            assert not looks_like_pan or node["name"] in NOT_A_PAN, node["name"]
            if isinstance(node["type"], list) and "null" in node["type"]:
                assert node["type"][0] == "null" and node["default"] is None, node["name"]
        elif node.get("type") == "enum":
            assert node.get("default") in node["symbols"], f"{name}: enum {node['name']}"
        elif node.get("logicalType") == "decimal":
            assert (node["type"], node["precision"], node["scale"]) == ("bytes", 18, 2)
        elif node.get("logicalType"):
            assert (node["type"], node["logicalType"]) == ("long", "timestamp-millis")


def test_single_object_header_is_the_spec_crc64_fingerprint() -> None:
    assert crc64_avro(b'"null"') == 7195948357588979594  # the Avro specification's own vector
    data = SingleObjectCodec().encode("transaction", transaction(), topic=TOPIC)
    canonical = fastavro.schema.to_parsing_canonical_form(load_schema("transaction"))
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == crc64_avro(canonical.encode()).to_bytes(8, "little")


def test_confluent_header_carries_the_id_registered_under_topic_value() -> None:
    codec = ConfluentCodec("mock://header")
    data = codec.encode("transaction", transaction(), topic=TOPIC)
    latest = codec.client.get_latest_version(f"{TOPIC}-value")
    assert data[:1] == b"\x00"
    assert int.from_bytes(data[1:5], "big") == latest.schema_id
    assert codec.decode(data, topic=TOPIC, expect="transaction").record == transaction()


def test_make_codec_picks_by_registry_url() -> None:
    assert isinstance(make_codec(None), SingleObjectCodec)
    assert isinstance(make_codec("mock://picked"), ConfluentCodec)


# --- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_round_trip_preserves_every_value(codec: Codec, name: str) -> None:
    record = RECORDS[name]()
    decoded = codec.decode(codec.encode(name, record, topic=name), topic=name, expect=name)
    assert decoded.schema == name
    assert not decoded.from_json
    assert decoded.record == record
    for key, value in decoded.record.items():
        assert type(value) is type(record[key]), key
        if isinstance(value, datetime):
            assert value.utcoffset() == timedelta(0)


def test_money_is_quantized_half_even_and_callers_record_untouched(codec: Codec) -> None:
    for raw in (Decimal("10.005"), Decimal("10.015"), Decimal("0.1"), 25):
        record = transaction(amount=raw)
        decoded = codec.decode(codec.encode("transaction", record, topic=TOPIC), topic=TOPIC)
        expected = Decimal(raw).quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN)
        assert decoded.record["amount"] == expected
        assert decoded.record["amount"].as_tuple().exponent == -2
        assert record["amount"] == raw


def test_missing_optional_fields_take_their_defaults(codec: Codec) -> None:
    record = RECORDS["verdict"]()
    for optional in ("is_override", "overrides_verdict_id", "decided_by", "fallbacks", "arm"):
        del record[optional]
    got = codec.decode(codec.encode("verdict", record, topic="d"), topic="d").record
    assert got["is_override"] is False
    assert got["overrides_verdict_id"] is None
    assert (got["decided_by"], got["fallbacks"], got["arm"]) == ("worker", [], "NONE")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"currency": 356}, "currency"),
        ({"geo": {"lat": "north", "lon": 72.8}}, "geo.lat"),
        ({"channel": "TELEPATHY"}, "channel"),
        ({"amount": 12.5}, "amount"),
        ({"amount": Decimal("12345678901234567.00")}, "amount"),
        ({"pan": "4111111111111111"}, "pan"),
    ],
)
def test_encode_error_names_the_field(codec: Codec, change: dict[str, Any], field: str) -> None:
    with pytest.raises(EncodeError) as caught:
        codec.encode("transaction", transaction(**change), topic=TOPIC)
    assert caught.value.field == field
    assert f"'{field}'" in str(caught.value)
    assert "4111" not in str(caught.value)


def test_encode_error_names_nested_fields(codec: Codec) -> None:
    verdict = RECORDS["verdict"]()
    del verdict["reasons"][1]["contribution"]
    with pytest.raises(EncodeError, match=r"'reasons\[1\]\.contribution'"):
        codec.encode("verdict", verdict, topic="d")
    for not_a_list in ("none", {"a": "b"}, None):
        with pytest.raises(EncodeError, match=r"'fallbacks'.*array of string"):
            codec.encode("verdict", {**RECORDS["verdict"](), "fallbacks": not_a_list}, topic="d")
    as_tuple = {**RECORDS["verdict"](), "fallbacks": ("a", "b")}
    got = codec.decode(codec.encode("verdict", as_tuple, topic="d"), topic="d").record
    assert got["fallbacks"] == ["a", "b"]


def test_errors_survive_pickling() -> None:
    decode = pickle.loads(pickle.dumps(DecodeError("missing_field", "no 'x'", field="x")))
    encode = pickle.loads(pickle.dumps(EncodeError("bad 'y'", field="y")))
    assert (decode.reason, decode.field, str(decode)) == ("missing_field", "x", "no 'x'")
    assert (encode.field, str(encode)) == ("y", "bad 'y'")


def test_encode_error_for_missing_required_field(codec: Codec) -> None:
    record = transaction()
    del record["issuer_id"]
    with pytest.raises(EncodeError, match="missing required field 'issuer_id'"):
        codec.encode("transaction", record, topic=TOPIC)
    with pytest.raises(EncodeError, match="unknown schema"):
        codec.encode("transactions", transaction(), topic=TOPIC)


# --- schema evolution --------------------------------------------------------------------------


def test_single_object_forward_new_writer_old_reader(evolved_dir: Path) -> None:
    writer = SingleObjectCodec(schema_dir=evolved_dir)
    data = writer.encode("transaction", transaction(loyalty_id="LY-7"), topic=TOPIC)
    with pytest.raises(DecodeError) as caught:
        SingleObjectCodec().decode(data, topic=TOPIC)  # never told about v1.1
    assert caught.value.reason == "unknown_schema"
    reader = SingleObjectCodec(
        extra_writer_schemas=[with_field(raw_schema("transaction"), LOYALTY)]
    )
    assert reader.decode(data, topic=TOPIC, expect="transaction").record == transaction()


def test_single_object_backward_old_writer_new_reader(evolved_dir: Path) -> None:
    data = SingleObjectCodec().encode("transaction", transaction(), topic=TOPIC)
    reader = SingleObjectCodec(
        extra_writer_schemas=[raw_schema("transaction")], schema_dir=evolved_dir
    )
    got = reader.decode(data, topic=TOPIC, expect="transaction").record
    assert got == {**transaction(), "loyalty_id": None}


def test_confluent_forward_new_writer_old_reader(evolved_dir: Path) -> None:
    old = ConfluentCodec("mock://evo")
    old.encode("transaction", transaction(), topic=TOPIC)  # v1 registered first
    new = ConfluentCodec("mock://evo", client=old.client, schema_dir=evolved_dir)
    data = new.encode("transaction", transaction(loyalty_id="LY-7"), topic=TOPIC)
    assert sorted(old.client.get_versions(f"{TOPIC}-value")) == [1, 2]
    fresh_reader = ConfluentCodec("mock://evo", client=old.client)  # must fetch v1.1 by id
    for reader in (old, fresh_reader):
        assert reader.decode(data, topic=TOPIC, expect="transaction").record == transaction()


def test_confluent_backward_old_writer_new_reader(evolved_dir: Path) -> None:
    old = ConfluentCodec("mock://evo2")
    data = old.encode("transaction", transaction(), topic=TOPIC)
    new = ConfluentCodec("mock://evo2", client=old.client, schema_dir=evolved_dir)
    got = new.decode(data, topic=TOPIC, expect="transaction").record
    assert got == {**transaction(), "loyalty_id": None}


def test_confluent_reader_accepts_single_object_records() -> None:
    data = SingleObjectCodec().encode("label", RECORDS["label"](), topic="labels")
    got = ConfluentCodec("mock://mixed").decode(data, topic="labels", expect="label")
    assert got.record == RECORDS["label"]()


# --- decode errors, one per reason ----------------------------------------------------------------


def reason_of(codec: Codec, data: bytes, expect: str | None = "transaction") -> DecodeError:
    with pytest.raises(DecodeError) as caught:
        codec.decode(data, topic=TOPIC, expect=expect)
    return caught.value


@pytest.mark.parametrize("data", [b"", b"\x07garbage", b"\xc3\x02" + bytes(12), b"\xc3\x01\x00"])
def test_undecodable_framing(codec: Codec, data: bytes) -> None:
    assert reason_of(codec, data).reason == "undecodable"


def test_single_object_codec_names_confluent_framing() -> None:
    error = reason_of(SingleObjectCodec(), b"\x00\x00\x00\x00\x07" + bytes(20))
    assert error.reason == "undecodable"
    assert "registry" in str(error)


def test_unknown_single_object_fingerprint(codec: Codec) -> None:
    stranger = {"type": "record", "name": "Stranger", "fields": [{"name": "x", "type": "long"}]}
    parsed = fastavro.parse_schema(stranger)
    fp = bytes.fromhex(
        fastavro.schema.fingerprint(
            fastavro.schema.to_parsing_canonical_form(parsed), "CRC-64-AVRO"
        )
    )
    error = reason_of(codec, b"\xc3\x01" + fp + avro_body(stranger, {"x": 1}))
    assert error.reason == "unknown_schema"
    assert fp.hex() in str(error)


def test_unknown_confluent_schema_id_and_foreign_schema() -> None:
    codec = ConfluentCodec("mock://unknown")
    assert reason_of(codec, b"\x00" + (4242).to_bytes(4, "big") + b"\x02").reason == (
        "unknown_schema"
    )
    stranger = {"type": "record", "name": "Stranger", "fields": [{"name": "x", "type": "long"}]}
    sid = codec.client.register_schema("other-value", Schema(json.dumps(stranger), "AVRO"))
    error = reason_of(codec, b"\x00" + sid.to_bytes(4, "big") + avro_body(stranger, {"x": 1}))
    assert error.reason == "unknown_schema"
    assert "Stranger" in str(error)


def test_registry_outage_is_not_a_dead_letter() -> None:
    class DownRegistry:
        def get_schema(self, schema_id: int) -> Any:
            raise SchemaRegistryError(503, 50301, "unavailable")

    codec = ConfluentCodec("http://registry.invalid", client=DownRegistry())
    with pytest.raises(SchemaRegistryError):
        codec.decode(b"\x00\x00\x00\x00\x01\x02", topic=TOPIC)


def test_wrong_record_type(codec: Codec) -> None:
    data = codec.encode("verdict", RECORDS["verdict"](), topic=TOPIC)
    error = reason_of(codec, data, expect="transaction")
    assert error.reason == "wrong_record_type"
    assert "verdict" in str(error)
    assert codec.decode(data, topic=TOPIC).schema == "verdict"  # no expectation, no complaint


def test_unknown_expected_schema_is_a_bug_not_bad_data(codec: Codec) -> None:
    data = codec.encode("transaction", transaction(), topic=TOPIC)
    with pytest.raises(KeyError):
        codec.decode(data, topic=TOPIC, expect="transactions")


@pytest.mark.parametrize("cut", [1, 5, 20])
def test_truncated_body_is_schema_invalid(codec: Codec, cut: int) -> None:
    data = codec.encode("transaction", transaction(), topic=TOPIC)
    assert reason_of(codec, data[:-cut]).reason == "schema_invalid"


def test_trailing_garbage_is_schema_invalid(codec: Codec) -> None:
    data = codec.encode("transaction", transaction(), topic=TOPIC)
    error = reason_of(codec, data + b"\x00\x01")
    assert error.reason == "schema_invalid"
    assert "trailing" in str(error)


def test_unresolvable_writer_is_schema_invalid() -> None:
    bad = retyped(raw_schema("transaction"), "currency", "long")
    record = transaction(currency=356)
    so = SingleObjectCodec(extra_writer_schemas=[bad])
    fp = bytes.fromhex(
        fastavro.schema.fingerprint(
            fastavro.schema.to_parsing_canonical_form(fastavro.parse_schema(bad)), "CRC-64-AVRO"
        )
    )
    assert reason_of(so, b"\xc3\x01" + fp + avro_body(bad, record)).reason == "schema_invalid"
    cf = ConfluentCodec("mock://bad")
    sid = cf.client.register_schema(f"{TOPIC}-value", Schema(json.dumps(bad), "AVRO"))
    data = b"\x00" + sid.to_bytes(4, "big") + avro_body(bad, record)
    assert reason_of(cf, data).reason == "schema_invalid"


def test_writer_lacking_a_required_field_is_missing_field() -> None:
    old = without_field(raw_schema("transaction"), "currency")
    record = {k: v for k, v in transaction().items() if k != "currency"}
    so = SingleObjectCodec(extra_writer_schemas=[old])
    fp = bytes.fromhex(
        fastavro.schema.fingerprint(
            fastavro.schema.to_parsing_canonical_form(fastavro.parse_schema(old)), "CRC-64-AVRO"
        )
    )
    cf = ConfluentCodec("mock://old")
    sid = cf.client.register_schema(f"{TOPIC}-value", Schema(json.dumps(old), "AVRO"))
    framed = [
        (so, b"\xc3\x01" + fp + avro_body(old, record)),
        (cf, b"\x00" + sid.to_bytes(4, "big") + avro_body(old, record)),
    ]
    for codec, data in framed:
        error = reason_of(codec, data)
        assert (error.reason, error.field) == ("missing_field", "currency")
        assert "'currency'" in str(error)


# --- JSON input ---------------------------------------------------------------------------------


def json_transaction(**changes: Any) -> dict[str, Any]:
    record = transaction()
    record["amount"] = str(record["amount"])
    record["event_time"] = record["event_time"].isoformat()
    record.update(changes)
    return record


def from_json(codec: Codec, value: Any, expect: str = "transaction") -> dict[str, Any]:
    decoded = codec.decode(json.dumps(value).encode(), topic=TOPIC, expect=expect)
    assert decoded.from_json
    assert decoded.schema == expect
    return decoded.record


def test_json_decodes_to_exactly_what_avro_gives(codec: Codec) -> None:
    avro = codec.decode(codec.encode("transaction", transaction(), topic=TOPIC), topic=TOPIC)
    assert from_json(codec, json_transaction()) == avro.record


def test_json_alternative_source_forms(codec: Codec) -> None:
    millis = to_millis(T0)
    shifted = (T0 + timedelta(hours=5, minutes=30)).replace(tzinfo=None).isoformat() + "+05:30"
    variants = [
        json_transaction(amount=1249.5, event_time=millis),
        json_transaction(amount="1249.4999", event_time=shifted),
        json_transaction(merchant_name={"string": "Sharma General Store"}, extra_key="ignored"),
    ]
    for value in variants:
        assert from_json(codec, value) == transaction()
    whitespace = b"\n  " + json.dumps(json_transaction()).encode()
    assert codec.decode(whitespace, topic=TOPIC, expect="transaction").record == transaction()


def test_json_fills_defaults_and_maps_unknown_enum_symbols_to_default(codec: Codec) -> None:
    value = json_transaction(channel="CONTACTLESS")
    for optional in ("merchant_name", "mcc", "geo", "device_id"):
        del value[optional]
    got = from_json(codec, value)
    assert got["channel"] == "UNKNOWN"
    assert [got[k] for k in ("merchant_name", "mcc", "geo", "device_id")] == [None] * 4


def test_json_nested_records_and_arrays(codec: Codec) -> None:
    verdict = RECORDS["verdict"]()
    value = {**verdict, "transaction_time": "2025-03-14T09:26:53.589Z"}
    value["decided_at"] = to_millis(verdict["decided_at"])
    assert from_json(codec, value, expect="verdict") == verdict
    value["reasons"][1]["contribution"] = "big"
    with pytest.raises(DecodeError) as caught:
        from_json(codec, value, expect="verdict")
    assert (caught.value.reason, caught.value.field) == ("wrong_type", "reasons[1].contribution")


@pytest.mark.parametrize("missing", ["currency", "event_time", "card_token"])
def test_json_missing_field(codec: Codec, missing: str) -> None:
    value = json_transaction()
    del value[missing]
    with pytest.raises(DecodeError) as caught:
        from_json(codec, value)
    assert (caught.value.reason, caught.value.field) == ("missing_field", missing)
    assert f"'{missing}'" in str(caught.value)


@pytest.mark.parametrize(
    ("change", "field", "expected"),
    [
        ({"amount": "twelve"}, "amount", "decimal(18,2)"),
        ({"amount": True}, "amount", "decimal(18,2)"),
        ({"amount": "12345678901234567.00"}, "amount", "decimal(18,2)"),
        ({"currency": 356}, "currency", "string"),
        ({"geo": {"lat": "north", "lon": 72.8}}, "geo.lat", "double"),
        ({"geo": [19.0, 72.8]}, "geo", "GeoPoint"),
        ({"event_time": "yesterday"}, "event_time", "timestamp-millis"),
        ({"event_time": "2025-03-14T09:26:53"}, "event_time", "timestamp-millis"),
        ({"event_time": 1.7e12}, "event_time", "timestamp-millis"),
        ({"channel": 3}, "channel", "Channel"),
        ({"mcc": 5411}, "mcc", "string"),
    ],
)
def test_json_wrong_type(codec: Codec, change: dict[str, Any], field: str, expected: str) -> None:
    with pytest.raises(DecodeError) as caught:
        from_json(codec, json_transaction(merchant_name=SECRET, **change))
    error = caught.value
    assert (error.reason, error.field) == ("wrong_type", field)
    assert f"'{field}'" in str(error) and expected in str(error)
    assert "Ravi" not in str(error) and "4111" not in str(error)


@pytest.mark.parametrize(
    "data", [b"{not json", b'{"amount": NaN}', b"{" * 100_000, b'{"a": "\xff"}']
)
def test_json_invalid_is_undecodable(codec: Codec, data: bytes) -> None:
    assert reason_of(codec, data).reason == "undecodable"


def test_json_without_an_expected_schema_is_undecodable(codec: Codec) -> None:
    data = json.dumps(json_transaction()).encode()
    assert reason_of(codec, data, expect=None).reason == "undecodable"


# --- robustness: whatever arrives, the worker gets a record or a DecodeError ------------------

FUZZ_CODECS: list[Codec] = [SingleObjectCodec(), ConfluentCodec("mock://fuzz")]
_VALID = FUZZ_CODECS[0].encode("transaction", transaction(), topic=TOPIC)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)
json_fields = st.dictionaries(
    st.sampled_from([*transaction(), "unknown"]), json_values, max_size=len(transaction())
)


@given(
    prefix=st.sampled_from([b"", b"\xc3\x01", _VALID[:10], b"\x00", b"{", _VALID[:40]]),
    rest=st.binary(max_size=64),
)
@settings(max_examples=300)
def test_arbitrary_bytes_decode_or_raise_decode_error(prefix: bytes, rest: bytes) -> None:
    for codec in FUZZ_CODECS:
        try:
            codec.decode(prefix + rest, topic=TOPIC, expect="transaction")
        except DecodeError as error:
            assert error.reason in REASONS


@given(fields=json_fields)
@settings(max_examples=300)
def test_arbitrary_json_decodes_or_names_a_field(fields: dict[str, Any]) -> None:
    value = {**json_transaction(), **fields}
    try:
        record = FUZZ_CODECS[0].decode(
            json.dumps(value).encode(), topic=TOPIC, expect="transaction"
        )
    except DecodeError as error:
        assert error.reason in ("wrong_type", "missing_field", "undecodable")
        assert error.reason == "undecodable" or error.field
        return
    # whatever JSON produced must be a record the Avro encoder accepts as-is
    assert FUZZ_CODECS[0].encode("transaction", record.record, topic=TOPIC)


def test_a_verdict_written_before_terminal_id_existed_reads_with_none() -> None:
    """Verdicts of v1.2 (schemas/history) sit in the decision topic and in case commands: the
    case agent reads them, so their labels say "no terminal" rather than failing."""
    from schemas.codec import HISTORY_DIR

    old = json.loads((HISTORY_DIR / "verdict.v1.2.avsc").read_text())
    assert "terminal_id" not in {f["name"] for f in old["fields"]}
    parsed = fastavro.parse_schema(old)
    body = io.BytesIO()
    later = ("terminal_id", "merchant_id", "device_id", "thresholds")  # added since v1.2
    record = {k: v for k, v in RECORDS["verdict"]().items() if k not in later}
    fastavro.schemaless_writer(body, parsed, record)
    canonical = fastavro.schema.to_parsing_canonical_form(parsed)
    fingerprint = bytes.fromhex(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO"))
    decoded = make_codec(None).decode(b"\xc3\x01" + fingerprint + body.getvalue(), topic="d",
                                      expect="verdict").record
    assert decoded["terminal_id"] is None and decoded["thresholds"] is None
    assert decoded["merchant_id"] is None and decoded["device_id"] is None
    assert {k: v for k, v in decoded.items() if k not in later} == record


def test_a_verdict_written_before_thresholds_existed_reads_with_none() -> None:
    """Verdicts of v1.3 (schemas/history) sit in the decision topic and in case commands; they
    read with no thresholds, as do overrides, which never had any."""
    from schemas.codec import HISTORY_DIR

    old = json.loads((HISTORY_DIR / "verdict.v1.3.avsc").read_text())
    assert "thresholds" not in {f["name"] for f in old["fields"]}
    parsed = fastavro.parse_schema(old)
    body = io.BytesIO()
    later = ("thresholds", "merchant_id", "device_id")  # fields added since v1.3
    record = {k: v for k, v in RECORDS["verdict"]().items() if k not in later}
    fastavro.schemaless_writer(body, parsed, record)
    canonical = fastavro.schema.to_parsing_canonical_form(parsed)
    fingerprint = bytes.fromhex(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO"))
    decoded = make_codec(None).decode(b"\xc3\x01" + fingerprint + body.getvalue(), topic="d",
                                      expect="verdict").record
    assert decoded["thresholds"] is None
    assert {k: v for k, v in decoded.items() if k not in later} == record


def test_records_written_with_a_superseded_version_stay_readable() -> None:
    """A label written before terminal_id existed decodes with terminal_id None."""
    import fastavro

    from schemas.codec import HISTORY_DIR, history_schemas

    old = json.loads((HISTORY_DIR / "label.v1.0.avsc").read_text())
    assert "terminal_id" not in {f["name"] for f in old["fields"]}
    assert any(s["name"] == "Label" for s in history_schemas())
    parsed = fastavro.parse_schema(old)
    body = io.BytesIO()
    record = {"transaction_id": "t1", "card_token": "tok_1", "label": "FRAUD",
              "fraud_scenario": None, "transaction_time": T0, "known_at": T0, "source": "ISSUER"}
    fastavro.schemaless_writer(body, parsed, record)
    canonical = fastavro.schema.to_parsing_canonical_form(parsed)
    fingerprint = bytes.fromhex(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO"))
    data = b"\xc3\x01" + fingerprint + body.getvalue()
    decoded = make_codec(None).decode(data, topic="t", expect="label").record
    assert decoded["terminal_id"] is None and decoded["label"] == "FRAUD"


@pytest.mark.parametrize(("schema", "old"), [("label", "label.v1.1.avsc"),
                                             ("verdict", "verdict.v1.4.avsc")])
def test_records_written_before_merchant_and_device_existed_read_with_none(
        schema: str, old: str) -> None:
    """Labels of v1.1 and verdicts of v1.4 (schemas/history) sit in their topics: they read
    with no merchant and no device, and the worker then routes the label by terminal."""
    from schemas.codec import HISTORY_DIR

    raw = json.loads((HISTORY_DIR / old).read_text())
    assert not {"merchant_id", "device_id"} & {f["name"] for f in raw["fields"]}
    parsed = fastavro.parse_schema(raw)
    body = io.BytesIO()
    record = {k: v for k, v in RECORDS[schema]().items() if k not in ("merchant_id", "device_id")}
    fastavro.schemaless_writer(body, parsed, record)
    canonical = fastavro.schema.to_parsing_canonical_form(parsed)
    fingerprint = bytes.fromhex(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO"))
    decoded = make_codec(None).decode(b"\xc3\x01" + fingerprint + body.getvalue(), topic="x",
                                      expect=schema).record
    assert decoded["merchant_id"] is None and decoded["device_id"] is None
    assert {k: v for k, v in decoded.items() if k not in ("merchant_id", "device_id")} == record
