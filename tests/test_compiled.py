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
from fastavro import schemaless_reader, schemaless_writer
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


@pytest.mark.parametrize("bad", [
    {"card_vector": "1.0"},           # a str is no array
    {"received_at_ms": "soon"},       # a str is no double
    {"kind": "TELEPATHY"},            # no such symbol
    {"unexpected": 1},                # a field the schema lacks
    {"transaction_id": None},         # not nullable
])
def test_what_fastavro_refuses_the_compiled_writer_refuses(bad: dict[str, Any]) -> None:
    write = SCHEMAS["scoring_event"].write
    assert write is not None
    record = {"kind": "TRANSACTION", "transaction_id": "t", "terminal_id": "q",
              "transaction_time": datetime(2024, 1, 1, tzinfo=UTC), "payload": b"",
              "received_at_ms": 1.0, **bad}
    with pytest.raises(Exception):  # noqa: B017 - the codec then asks fastavro for the reason
        write(record)


def test_double_vectors_pack_in_one_step() -> None:
    write = SCHEMAS["scoring_event"].write
    assert write is not None
    vector = [0.5, -1.0, 1e308]
    record = {"kind": "TRANSACTION", "transaction_id": "t", "terminal_id": "q",
              "transaction_time": datetime(2024, 1, 1, tzinfo=UTC), "payload": b"",
              "received_at_ms": 1.0, "card_vector": vector}
    assert struct.pack("<3d", *vector) in write(record)
    assert write(record) == _fastavro_bytes("scoring_event", record)


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
