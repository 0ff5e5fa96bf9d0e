"""Avro encoding and decoding for every topic, with or without a schema registry.

Records always carry their writer schema's identity (a single-object fingerprint or a Confluent
schema id), so a reader can resolve an older or newer writer against the schema in this repo and
services can be upgraded one at a time. Every decoding failure is a :class:`DecodeError` with a
machine-readable ``reason`` that the worker copies into the dead letter; messages name the field
but never echo values, because values may carry card data.

Gateways that cannot speak Avro yet may send JSON; it is converted to exactly the Python form
Avro decoding gives (Decimal money, UTC datetimes), so downstream code cannot tell the difference.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any, Literal, Protocol, cast

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import SchemaParseException, fingerprint, to_parsing_canonical_form

from schemas import walker
from schemas.compatibility import unresolvable_field
from schemas.compiled import Reader, Writer, compile_schema
from schemas.pan import redact_text

__all__ = [
    "SCHEMA_DIR",
    "Codec",
    "ConfluentCodec",
    "DecodeError",
    "DecodeReason",
    "Decoded",
    "EncodeError",
    "SingleObjectCodec",
    "load_schema",
    "make_codec",
    "schema_names",
]

SCHEMA_DIR = Path(__file__).resolve().parent

DecodeReason = Literal[
    "undecodable",
    "unknown_schema",
    "missing_field",
    "wrong_type",
    "schema_invalid",
    "wrong_record_type",
]

_SINGLE_OBJECT_MAGIC = b"\xc3\x01"
_SINGLE_OBJECT_HEADER = 10
_CONFLUENT_MAGIC = b"\x00"
_CONFLUENT_HEADER = 5
_JSON_LEAD = b" \t\r\n"


class DecodeError(Exception):
    """A record that cannot be turned into its schema's Python form; ``reason`` drives routing."""

    def __init__(self, reason: DecodeReason, message: str, *, field: str | None = None) -> None:
        # Messages can quote schema or library text; redact anyway so no path can leak a PAN.
        super().__init__(redact_text(message)[0])
        self.reason: DecodeReason = reason
        self.field = field

    def __reduce__(self) -> tuple[Any, ...]:  # keyword state survives pickling across processes
        return (_rebuild_decode_error, (self.reason, str(self), self.field))


class EncodeError(ValueError):
    """The record does not match its schema: a bug in the producing code, not bad input."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(redact_text(message)[0])
        self.field = field

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_encode_error, (str(self), self.field))


def _rebuild_decode_error(reason: DecodeReason, message: str, field: str | None) -> DecodeError:
    return DecodeError(reason, message, field=field)


def _rebuild_encode_error(message: str, field: str | None) -> EncodeError:
    return EncodeError(message, field=field)


@dataclass(slots=True)
class Decoded:
    schema: str
    record: dict[str, Any]
    from_json: bool = False  # lets the worker count gateways that still send JSON


class Codec(Protocol):
    def encode(self, schema: str, record: Mapping[str, Any], *, topic: str) -> bytes: ...

    def decode(self, data: bytes, *, topic: str, expect: str | None = None) -> Decoded: ...


@dataclass(frozen=True)
class _Schema:
    """One repo schema with everything the hot path needs precomputed."""

    name: str
    raw: dict[str, Any]
    parsed: dict[str, Any]
    named: dict[str, Any]
    full_name: str
    fingerprint: bytes
    prepare: Callable[[Any], Any] | None
    # The schema compiled to Python (schemas.compiled): tried first, fastavro when it declines.
    write: Writer | None = None
    read: Reader | None = None


@dataclass(frozen=True)
class _Writer:
    """How to read bytes from one writer schema: as-is, resolved, or not at all."""

    schema: _Schema  # the repo schema (reader) of the same full name
    writer: dict[str, Any]
    reader: dict[str, Any] | None  # None when writer and reader are the same schema
    error: DecodeError | None = None  # resolution known to fail, found when the writer was seen


def _parse(raw: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    named: dict[str, Any] = {}
    parsed = parse_schema(dict(raw), named_schemas=named)
    if not isinstance(parsed, dict) or parsed.get("type") != "record":
        raise SchemaParseException("only record schemas can be topic values")
    return parsed, named


def _fingerprint(parsed: dict[str, Any]) -> bytes:
    # fastavro's CRC-64-AVRO hex already lists the bytes little-endian, the order the
    # single-object header needs (checked against the Avro spec's vector in the tests).
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))


def _load_dir(directory: Path) -> dict[str, _Schema]:
    out: dict[str, _Schema] = {}
    for path in sorted(directory.glob("*.avsc")):
        raw = json.loads(path.read_text(encoding="utf-8"))
        parsed, named = _parse(raw)
        compiled = compile_schema(raw)
        out[path.stem] = _Schema(
            name=path.stem,
            raw=raw,
            parsed=parsed,
            named=named,
            full_name=parsed["name"],
            fingerprint=_fingerprint(parsed),
            prepare=_preparer(parsed, named),
            write=compiled[0] if compiled else None,
            read=compiled[1] if compiled else None,
        )
    return out


@cache
def _schemas(directory: Path = SCHEMA_DIR) -> dict[str, _Schema]:
    return _load_dir(directory)


def load_schema(name: str) -> dict[str, Any]:
    """The parsed schema ``name`` (file stem, e.g. "transaction"); raises KeyError if unknown."""
    return _schemas()[name].parsed


def schema_names() -> list[str]:
    return list(_schemas())


class _AvroCodec:
    """Shared single-object and JSON handling; subclasses add their own framing."""

    def __init__(
        self,
        extra_writer_schemas: Iterable[Mapping[str, Any]] = (),
        *,
        schema_dir: Path | None = None,
    ) -> None:
        self._by_name = _schemas(schema_dir.resolve()) if schema_dir else _schemas()
        self._by_full_name = {s.full_name: s for s in self._by_name.values()}
        self._by_fingerprint: dict[bytes, _Writer] = {
            s.fingerprint: _Writer(s, s.parsed, None) for s in self._by_name.values()
        }
        for raw in extra_writer_schemas:
            parsed, named = _parse(raw)
            repo = self._by_full_name.get(parsed["name"])
            if repo is None:
                raise ValueError(f"extra writer schema {parsed['name']} has no repo schema")
            fp = _fingerprint(parsed)
            self._by_fingerprint.setdefault(fp, self._resolver(repo, parsed, named))

    def _schema(self, name: str) -> _Schema:
        try:
            return self._by_name[name]
        except KeyError:
            raise EncodeError(f"unknown schema {name!r}") from None

    @staticmethod
    def _resolver(repo: _Schema, writer: dict[str, Any], named: dict[str, Any]) -> _Writer:
        if _fingerprint(writer) == repo.fingerprint:
            return _Writer(repo, writer, None)
        missing = unresolvable_field(writer, repo.parsed, named, repo.named)
        error = None
        if missing is not None:
            error = DecodeError(
                "missing_field",
                f"{repo.name}: writer schema lacks field '{missing}', which has no default",
                field=missing,
            )
        return _Writer(repo, writer, repo.parsed, error)

    def _body(self, schema: _Schema, record: Mapping[str, Any]) -> bytes:
        """The schemaless Avro body: the compiled writer's, or (for what it declines, and with
        the error that names the field) fastavro's, with money quantized so it accepts it."""
        if schema.write is not None:
            try:
                return schema.write(record)
            except Exception:  # fastavro is the reference: it encodes or says what is wrong
                pass
        try:
            prepared = schema.prepare(record) if schema.prepare else record
            out = io.BytesIO()
            schemaless_writer(out, schema.parsed, prepared, strict_allow_default=True)
        except Exception as exc:  # fastavro raises several types; all mean "does not match"
            raise self._encode_error(schema, record, exc) from None
        return out.getvalue()

    @staticmethod
    def _encode_error(schema: _Schema, record: Mapping[str, Any], exc: Exception) -> EncodeError:
        problem = walker.diagnose(record, schema.parsed, schema.named)
        if problem is not None:
            return EncodeError(f"{schema.name}: {problem.message}", field=problem.field)
        return EncodeError(f"{schema.name}: {type(exc).__name__}: {exc}")

    def encode(self, schema: str, record: Mapping[str, Any], *, topic: str) -> bytes:
        """Single-object encoding; no registry needed, the fingerprint names the writer."""
        entry = self._schema(schema)
        return _SINGLE_OBJECT_MAGIC + entry.fingerprint + self._body(entry, record)

    def decode(self, data: bytes, *, topic: str, expect: str | None = None) -> Decoded:
        if expect is not None and expect not in self._by_name:
            raise KeyError(f"unknown expected schema {expect!r}")  # a bug, not bad input
        head = data[:1]
        if head == b"\xc3":
            return self._decode_single_object(data, expect)
        if head == _CONFLUENT_MAGIC:
            return self._decode_confluent(data, expect)
        if head == b"{" or (head and head in _JSON_LEAD and data.lstrip(_JSON_LEAD)[:1] == b"{"):
            return self._decode_json(data, expect)
        raise DecodeError("undecodable", "not Avro single-object, Confluent or JSON framing")

    def _decode_single_object(self, data: bytes, expect: str | None) -> Decoded:
        if data[:2] != _SINGLE_OBJECT_MAGIC or len(data) < _SINGLE_OBJECT_HEADER:
            raise DecodeError("undecodable", "truncated or bad Avro single-object header")
        writer = self._by_fingerprint.get(data[2:_SINGLE_OBJECT_HEADER])
        if writer is None:
            fp = data[2:_SINGLE_OBJECT_HEADER].hex()
            raise DecodeError("unknown_schema", f"no known schema has fingerprint {fp}")
        return self._read(writer, data, _SINGLE_OBJECT_HEADER, expect)

    def _decode_confluent(self, data: bytes, expect: str | None) -> Decoded:
        raise DecodeError(
            "undecodable", "Confluent wire format, but no schema registry is configured"
        )

    def _read(self, writer: _Writer, data: bytes, offset: int, expect: str | None) -> Decoded:
        name = writer.schema.name
        if expect is not None and name != expect:
            raise DecodeError("wrong_record_type", f"expected a {expect} record, got a {name}")
        if writer.error is not None:
            raise writer.error
        fast = writer.schema.read if writer.reader is None else None
        if fast is not None:
            try:
                record, end = fast(data, offset)
                if end == len(data):
                    return Decoded(name, record)
            except Exception:  # fastavro is the reference: it reads or says what is wrong
                pass
        stream = io.BytesIO(data)
        stream.seek(offset)
        try:
            record = schemaless_reader(stream, writer.writer, writer.reader)
        except Exception as exc:  # truncation and garbage surface as many exception types
            raise DecodeError(
                "schema_invalid", f"{name}: Avro body unreadable ({type(exc).__name__}: {exc})"
            ) from None
        if stream.tell() != len(data):
            raise DecodeError("schema_invalid", f"{name}: trailing bytes after the Avro body")
        return Decoded(name, cast(dict[str, Any], record))

    def _decode_json(self, data: bytes, expect: str | None) -> Decoded:
        if expect is None:
            raise DecodeError("undecodable", "JSON input needs the topic's expected schema")
        schema = self._by_name[expect]
        try:
            value = json.loads(data, parse_float=Decimal, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as exc:
            raise DecodeError("undecodable", f"invalid JSON ({type(exc).__name__})") from None
        try:
            record = walker.from_json(value, schema.parsed, schema.named)
        except walker.Invalid as exc:
            raise DecodeError(exc.reason, f"{expect}: {exc.message}", field=exc.field) from None
        return Decoded(expect, record, from_json=True)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


class SingleObjectCodec(_AvroCodec):
    """Avro single-object encoding: the fingerprint in every record names its writer schema.

    ``extra_writer_schemas`` are other versions of repo records (older or newer producers); they
    are resolved against the repo schema of the same full name. ``schema_dir`` swaps the reader
    schemas, which is how a service at a different schema version is simulated in tests.
    """


class ConfluentCodec(_AvroCodec):
    """Confluent wire format against a schema registry (subject ``<topic>-value``).

    Encoding registers the repo schema under the topic's subject on first use, as Confluent's own
    serializers do. Decoding also accepts single-object records, so a topic can migrate from
    registry-less producers without a flag day. A registry that cannot be reached raises its own
    error rather than DecodeError: the record is fine and must be retried, not dead-lettered.
    """

    def __init__(
        self,
        url: str,
        *,
        client: Any | None = None,
        extra_writer_schemas: Iterable[Mapping[str, Any]] = (),
        schema_dir: Path | None = None,
    ) -> None:
        super().__init__(extra_writer_schemas, schema_dir=schema_dir)
        if client is None:
            from confluent_kafka.schema_registry import SchemaRegistryClient

            client = SchemaRegistryClient.new_client({"url": url})
        self.client: Any = client
        self._headers: dict[tuple[str, str], bytes] = {}
        self._by_id: dict[int, _Writer] = {}

    def encode(self, schema: str, record: Mapping[str, Any], *, topic: str) -> bytes:
        entry = self._schema(schema)
        header = self._headers.get((topic, schema))
        if header is None:
            header = self._register(entry, topic)
        return header + self._body(entry, record)

    def _register(self, entry: _Schema, topic: str) -> bytes:
        from confluent_kafka.schema_registry import Schema

        schema_id = int(
            self.client.register_schema(f"{topic}-value", Schema(json.dumps(entry.raw), "AVRO"))
        )
        header = _CONFLUENT_MAGIC + schema_id.to_bytes(4, "big")
        self._headers[(topic, entry.name)] = header
        self._by_id[schema_id] = _Writer(entry, entry.parsed, None)
        return header

    def _decode_confluent(self, data: bytes, expect: str | None) -> Decoded:
        if len(data) < _CONFLUENT_HEADER:
            raise DecodeError("undecodable", "truncated Confluent header")
        schema_id = int.from_bytes(data[1:_CONFLUENT_HEADER], "big")
        writer = self._by_id.get(schema_id)
        if writer is None:
            writer = self._fetch(schema_id)
        return self._read(writer, data, _CONFLUENT_HEADER, expect)

    def _fetch(self, schema_id: int) -> _Writer:
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        try:
            registered = self.client.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                raise DecodeError("unknown_schema", f"schema id {schema_id} not found") from None
            raise
        if (registered.schema_type or "AVRO") != "AVRO" or registered.references:
            raise DecodeError(
                "schema_invalid", f"schema id {schema_id} is not a self-contained Avro schema"
            )
        try:
            parsed, named = _parse(json.loads(registered.schema_str))
        except (ValueError, SchemaParseException) as exc:
            raise DecodeError(
                "schema_invalid", f"schema id {schema_id} does not parse: {exc}"
            ) from None
        repo = self._by_full_name.get(parsed["name"])
        if repo is None:
            raise DecodeError(
                "unknown_schema", f"schema id {schema_id} is {parsed['name']}, not a repo schema"
            )
        # A registered schema we know by its fingerprint reads as the single-object path reads
        # it: a codec whose readers are several versions of one record (the worker's reader of
        # v1.x scoring events, schemas/history) then reads each version with its own schema.
        writer = (self._by_fingerprint.get(_fingerprint(parsed))
                  or self._resolver(repo, parsed, named))
        self._by_id[schema_id] = writer
        return writer


HISTORY_DIR = SCHEMA_DIR / "history"


def history_schemas() -> list[dict[str, Any]]:
    """Superseded writer versions still readable (see schemas/history/README.md)."""
    return [json.loads(p.read_text()) for p in sorted(HISTORY_DIR.glob("*.avsc"))]


def make_codec(schema_registry_url: str | None) -> Codec:
    """The codec the deployment calls for: Confluent with a registry, single-object without.

    Both read the superseded versions in schemas/history, so a schema change never turns the
    records already in a topic into dead letters.
    """
    if schema_registry_url:
        return ConfluentCodec(schema_registry_url, extra_writer_schemas=history_schemas())
    return SingleObjectCodec(history_schemas())


def _preparer(
    schema: Any, named: Mapping[str, Any], in_union: bool = False
) -> Callable[[Any], Any] | None:
    """A function readying a record for fastavro, or None when nothing needs doing.

    Two gaps in fastavro are closed here. It refuses a Decimal with more places than the schema's
    scale, yet callers compute amounts (fees, conversions) that have them, so money is quantized.
    And it writes any iterable as an array, so ``"none"`` where a list belongs would silently
    become ``["n", "o", "n", "e"]``; such values are refused. Built once per schema so records
    without money or arrays pay nothing; containers are copied, never the caller's mutated.
    """
    schema = named.get(schema, schema) if isinstance(schema, str) else schema
    if isinstance(schema, list):
        fixers = [f for f in (_preparer(b, named, True) for b in schema) if f is not None]
        if not fixers:
            return None

        def fix_union(value: Any) -> Any:
            for fix in fixers:  # each ignores values of shapes it does not handle
                value = fix(value)
            return value

        return fix_union
    if not isinstance(schema, dict):
        return None
    if schema.get("logicalType") == "decimal":
        scale, precision = schema.get("scale", 0), schema["precision"]

        def fix_decimal(value: Any) -> Any:
            if isinstance(value, int) and not isinstance(value, bool):
                value = Decimal(value)
            if not isinstance(value, Decimal):
                return value
            value = walker.quantize(value, scale)
            if len(value.as_tuple().digits) > precision:  # fastavro would write it regardless
                raise ValueError("decimal exceeds the schema's precision")
            return value

        return fix_decimal
    kind = schema["type"]
    if kind == "record":
        fields = [(f["name"], _preparer(f["type"], named)) for f in schema["fields"]]
        active = [(name, fix) for name, fix in fields if fix is not None]
        if not active:
            return None

        def fix_record(value: Any) -> Any:
            if not isinstance(value, Mapping):
                return value
            copy = dict(value)
            for name, fix in active:
                if name in copy:
                    copy[name] = fix(copy[name])
            return copy

        return fix_record
    if kind == "array":
        items = _preparer(schema["items"], named)
        if items is None and in_union:  # a str may belong to another branch
            return None

        def fix_array(value: Any) -> Any:
            if isinstance(value, walker.NOT_ARRAYS) or value is None:
                if in_union:
                    return value
                raise TypeError("array value must be a sequence, not a string or mapping")
            return value if items is None else [items(v) for v in value]

        return fix_array
    if kind == "map":
        values = _preparer(schema["values"], named)
        if values is None:
            return None

        def fix_map(value: Any) -> Any:
            if isinstance(value, Mapping):
                return {k: values(v) for k, v in value.items()}
            return value

        return fix_map
    return None
