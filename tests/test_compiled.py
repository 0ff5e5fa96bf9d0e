"""The compiled Avro codec against fastavro, the reference: same bytes out, same values in.

Records are drawn from each repo schema by Hypothesis (unicode strings, extreme longs, money at
the schema's precision, timestamps before and after 1970, empty and full containers, both union
branches), so a schema change that the compiler misreads fails here before it reaches a topic.
"""

from __future__ import annotations

import io
import json
import struct
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.codec import SCHEMA_DIR, _schemas
from schemas.compiled import compile_schema

SCHEMAS = _schemas()


def _strategy(t: Any, named: dict[str, Any]) -> st.SearchStrategy[Any]:
    if isinstance(t, str) and t in named:
        t = named[t]
    if isinstance(t, list):
        return st.one_of(*(_strategy(b, named) for b in t))
    if isinstance(t, dict) and isinstance(t.get("type"), dict | list):
        return _strategy(t["type"], named)
    kind = t["type"] if isinstance(t, dict) else t
    logical = t.get("logicalType") if isinstance(t, dict) else None
    if logical == "timestamp-millis":
        return st.integers(-(10**12), 4 * 10**12).map(
            lambda ms: datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms))
    if logical == "decimal":
        scale, precision = t.get("scale", 0), t["precision"]
        bound = 10**precision - 1
        return st.integers(-bound, bound).map(lambda n: Decimal(n).scaleb(-scale))
    simple: dict[str, st.SearchStrategy[Any]] = {
        "string": st.text(max_size=40),
        "bytes": st.binary(max_size=40),
        "long": st.integers(-(2**63), 2**63 - 1),
        "int": st.integers(-(2**31), 2**31 - 1),
        "double": st.floats(allow_nan=False),
        "float": st.floats(allow_nan=False, width=32),
        "boolean": st.booleans(),
        "null": st.none(),
    }
    if kind in simple:
        return simple[kind]
    if kind == "enum":
        named[t["name"]] = t
        return st.sampled_from(t["symbols"])
    if kind == "array":
        return st.lists(_strategy(t["items"], named), max_size=4)
    if kind == "map":
        return st.dictionaries(st.text(max_size=12), _strategy(t["values"], named), max_size=4)
    assert kind == "record", kind
    named[t["name"]] = t
    return st.fixed_dictionaries({f["name"]: _strategy(f["type"], named) for f in t["fields"]})


def _fastavro_bytes(name: str, record: dict[str, Any]) -> bytes:
    schema = SCHEMAS[name]
    out = io.BytesIO()
    schemaless_writer(out, schema.parsed, record, strict_allow_default=True)
    return out.getvalue()


def _fastavro_record(name: str, data: bytes) -> Any:
    return schemaless_reader(io.BytesIO(data), SCHEMAS[name].parsed, None)


def test_every_repo_schema_compiles() -> None:
    """The hot path's speed rests on it: a schema left to fastavro would be silently slower."""
    for path in sorted(SCHEMA_DIR.glob("*.avsc")):
        assert compile_schema(json.loads(path.read_text())) is not None, path.name


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_same_bytes_and_values_as_fastavro(name: str) -> None:
    schema = SCHEMAS[name]
    assert schema.write is not None and schema.read is not None
    write, read = schema.write, schema.read

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(_strategy(schema.raw, {}))
    def check(record: dict[str, Any]) -> None:
        reference = _fastavro_bytes(name, record)
        assert write(record) == reference
        got, end = read(reference, 0)
        assert end == len(reference)
        assert got == _fastavro_record(name, reference)

    check()


def test_reads_from_an_offset_and_leaves_trailing_bytes_to_the_caller() -> None:
    record = {"items": [b"a", b"bc"]}
    body = _fastavro_bytes("outcome_batch", record)
    assert SCHEMAS["outcome_batch"].read is not None
    got, end = SCHEMAS["outcome_batch"].read(b"HEADER" + body + b"tail", 6)
    assert got == record and end == 6 + len(body)


def test_blocks_with_byte_sizes_as_java_writers_send_them() -> None:
    """A negative count is followed by the block's size in bytes (Avro spec, 'Arrays')."""
    read = SCHEMAS["outcome_batch"].read
    assert read is not None
    items = [b"xy", b"z"]
    block = b"".join(bytes([len(i) * 2]) + i for i in items)
    data = bytes([3]) + bytes([len(block) * 2]) + block + b"\x00"  # count -2, then the size
    assert read(data, 0) == ({"items": items}, len(data))


@pytest.mark.parametrize("data", [b"", b"\x02", b"\x04ab", b"\x7f" * 3, b"\x01\x00"])
def test_bad_bytes_raise_rather_than_guess(data: bytes) -> None:
    read = SCHEMAS["outcome_batch"].read
    assert read is not None
    with pytest.raises(Exception):  # noqa: B017 - any error sends the codec to fastavro
        _, end = read(data, 0)
        assert end == len(data), "a partial read must not pass for a whole one"


TX = {"transaction_id": "t", "card_token": "tok_1", "customer_id": "c", "merchant_id": "m",
      "terminal_id": "q", "merchant_name": None, "mcc": None, "amount": Decimal("12.50"),
      "currency": "EUR", "country": "FR", "geo": None, "device_id": None, "channel": "POS",
      "issuer_bin": "457173", "issuer_id": "issuer-1",
      "event_time": datetime(2024, 1, 1, tzinfo=UTC)}


def _hand_over(**changes: Any) -> dict[str, Any]:
    return {"body": {"transaction": TX, "received_at_ms": 1.0, **changes}}


@pytest.mark.parametrize("record", [
    _hand_over(card_vector="1.0"),                              # a str is no array
    _hand_over(received_at_ms="soon"),                          # a str is no double
    _hand_over(transaction={**TX, "channel": "TELEPATHY"}),     # no such symbol
    _hand_over(unexpected=1),                                   # a field the schema lacks
    _hand_over(transaction={**TX, "transaction_id": None}),     # not nullable
    {"body": {"transaction": TX, "watermarks": {}, "received_at_ms": 1.0}},  # two branches
    {"body": {"card_vector": [1.0]}},                           # no branch's own field
    {"body": None},                                             # no null branch
])
def test_what_fastavro_refuses_the_compiled_writer_refuses(record: dict[str, Any]) -> None:
    write = SCHEMAS["scoring_event"].write
    assert write is not None
    with pytest.raises(Exception):  # noqa: B017 - fastavro's refusal: the reference
        _fastavro_bytes("scoring_event", record)
    with pytest.raises(Exception):  # noqa: B017 - the codec then asks fastavro for the reason
        write(record)


def test_double_vectors_pack_in_one_step() -> None:
    write = SCHEMAS["scoring_event"].write
    assert write is not None
    vector = [0.5, -1.0, 1e308]
    record = _hand_over(card_vector=vector)
    assert struct.pack("<3d", *vector) in write(record)
    assert write(record) == _fastavro_bytes("scoring_event", record)


@pytest.mark.parametrize("body", [
    {"transaction": TX, "received_at_ms": 1.0},  # the defaults left out
    {"transaction": {**TX, "geo": {"lat": 1.5, "lon": -2.0}}, "card_vector": [0.25],
     "card_features": {"x": 1.0}, "card_state_stale_s": 3.0, "received_at_ms": 1.0,
     "card_amount_history": [{"t_ms": 5, "transaction_id": "a", "amount": 9.5,
                              "currency": "EUR"}], "source_timestamp_ms": 2.0},
    {"transaction_id": "t", "card_token": "tok_1", "terminal_id": "q", "label": "FRAUD",
     "fraud_scenario": None, "transaction_time": datetime(2024, 1, 1, tzinfo=UTC),
     "known_at": datetime(2024, 1, 9, tzinfo=UTC), "source": "ISSUER"},
    {"transaction_id": "t", "card_token": "tok_1",  # a label with its defaults left out
     "transaction_time": datetime(2024, 1, 1, tzinfo=UTC),
     "known_at": datetime(2024, 1, 9, tzinfo=UTC)},
    {"watermarks": {"transactions/0": 2**63 - 1, "labels/3": 0}},
    {"watermarks": {}},
])
def test_each_scoring_event_branch_as_fastavro_writes_it(body: dict[str, Any]) -> None:
    schema = SCHEMAS["scoring_event"]
    assert schema.write is not None and schema.read is not None
    reference = _fastavro_bytes("scoring_event", {"body": body})
    assert schema.write({"body": body}) == reference
    assert schema.read(reference, 0) == (_fastavro_record("scoring_event", reference),
                                         len(reference))


# A union of records that share fields, with null, and referred to by name: what the scoring
# event's body does, and the cases it does not (yet) exercise.
UNION_OF_RECORDS = {
    "type": "record", "name": "Envelope", "namespace": "test.unions", "fields": [
        {"name": "body", "type": [
            "null",
            {"type": "record", "name": "A", "fields": [
                {"name": "id", "type": "string"}, {"name": "a", "type": "long"}]},
            {"type": "record", "name": "B", "fields": [
                {"name": "id", "type": "string"},
                {"name": "b", "type": ["null", "double"], "default": None},
                {"name": "bb", "type": "string"}]},
            {"type": "record", "name": "C", "fields": [
                {"name": "c", "type": {"type": "map", "values": "long"}, "default": {}}]},
        ]},
        {"name": "more", "type": {"type": "array", "items": ["C", "A"]}},
    ]}
_UNIONS = parse_schema(UNION_OF_RECORDS, named_schemas={})


def _union_bytes(record: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    schemaless_writer(out, _UNIONS, record, strict_allow_default=True)
    return out.getvalue()


def test_unions_of_records_compile_to_the_same_bytes_and_values_as_fastavro() -> None:
    compiled = compile_schema(UNION_OF_RECORDS)
    assert compiled is not None
    write, read = compiled

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(_strategy(UNION_OF_RECORDS, {}))
    def check(record: dict[str, Any]) -> None:
        reference = _union_bytes(record)
        assert write(record) == reference
        got, end = read(reference, 0)
        assert end == len(reference)
        assert got == schemaless_reader(io.BytesIO(reference), _UNIONS, None)

    check()
    # Defaults left out: the branch is still the one whose own field the dict holds.
    for body in ({"id": "x", "bb": "y"}, {"c": {"k": 1}}, None):
        record = {"body": body, "more": [{"id": "z", "a": 3}, {"c": {}}]}
        assert write(record) == _union_bytes(record)
    # No branch's own field (C's has a default): left to fastavro, which picks C.
    record = {"body": {}, "more": []}
    with pytest.raises(Exception):  # noqa: B017 - the codec then asks fastavro
        write(record)
    assert _union_bytes(record) == b"\x06\x00\x00"


@pytest.mark.parametrize("union", [
    [{"type": "record", "name": "P", "fields": [{"name": "x", "type": "long"}]},
     {"type": "record", "name": "Q", "fields": [{"name": "x", "type": "long"},
                                                {"name": "y", "type": "long"}]}],  # P: no own
    [{"type": "record", "name": "P", "fields": [{"name": "x", "type": "long"}]}, "string"],
    ["null", "string", "long"],
])
def test_unions_a_field_cannot_tell_apart_stay_with_fastavro(union: list[Any]) -> None:
    schema = {"type": "record", "name": "R", "fields": [{"name": "u", "type": union}]}
    assert compile_schema(schema) is None


def test_the_codec_serves_repo_records_from_the_compiled_code(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With fastavro's reader and writer taken away, a valid record still round-trips: the
    codec's hot path is the compiled code, fastavro only its fallback."""
    from schemas import codec as codec_module

    def refuse(*_: Any, **__: Any) -> Any:
        raise AssertionError("fastavro was asked")

    codec = codec_module.make_codec(None)
    record = {"items": [b"a", b"bc"]}
    monkeypatch.setattr(codec_module, "schemaless_writer", refuse)
    monkeypatch.setattr(codec_module, "schemaless_reader", refuse)
    data = codec.encode("outcome_batch", record, topic="t")
    assert codec.decode(data, topic="t", expect="outcome_batch").record == record


@pytest.mark.parametrize("terminal", ["term-0042", None, "left out"])
def test_a_verdict_with_or_without_its_terminal_as_fastavro_writes_it(terminal: str | None
                                                                      ) -> None:
    """The terminal id added in verdict v1.3 is optional: set, null, or left out by code that
    predates it (the compiled writer takes the default, as fastavro does)."""
    from tests.test_codec import RECORDS

    schema = SCHEMAS["verdict"]
    assert schema.write is not None and schema.read is not None
    record = RECORDS["verdict"]()
    if terminal == "left out":
        del record["terminal_id"]
    else:
        record["terminal_id"] = terminal
    reference = _fastavro_bytes("verdict", record)
    assert schema.write(record) == reference
    got, _ = schema.read(reference, 0)
    assert got["terminal_id"] == (None if terminal == "left out" else terminal)
    assert got == _fastavro_record("verdict", reference)
