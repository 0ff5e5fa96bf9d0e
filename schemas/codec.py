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
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from functools import cache
from pathlib import Path
from typing import Any, Literal, Protocol, cast

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import SchemaParseException, fingerprint, to_parsing_canonical_form

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
        missing = _unresolvable_field(writer, repo.parsed, named, repo.named)
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
        problem = _diagnose(record, schema.parsed, schema.named)
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
            record = _from_json(value, schema.parsed, schema.named)
        except _Invalid as exc:
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
        writer = self._resolver(repo, parsed, named)
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


# --- Walking schemas -------------------------------------------------------------------------
# fastavro covers the binary hot path. What it does not give us is (a) JSON -> Avro's Python form
# with errors that name the field, (b) a readable reason when encoding fails, and (c) early
# detection of a writer that lacks a field the reader needs. One walker over parsed schemas
# serves (a) and (b); ``json`` selects the lenient source forms JSON needs.

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NOT_ARRAYS = (str, bytes, bytearray, Mapping)  # iterable, yet never meant as an Avro array
_INT_RANGE = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}
_JSON_KIND = {
    type(None): "null",
    bool: "boolean",
    int: "number",
    float: "number",
    Decimal: "number",
    str: "string",
    list: "array",
    dict: "object",
}


class _Invalid(Exception):
    def __init__(self, reason: DecodeReason, field: str, message: str) -> None:
        super().__init__(message)
        self.reason: DecodeReason = reason
        self.field = field
        self.message = message


@dataclass(frozen=True)
class _Walk:
    named: Mapping[str, Any]
    json: bool  # JSON source: strings for money/time, unknown enum symbols -> default, extras ok

    def convert(self, value: Any, schema: Any, path: str) -> Any:
        if isinstance(schema, str):
            if schema in self.named:
                return self.convert(value, self.named[schema], path)
            return self.primitive(value, schema, path)
        if isinstance(schema, list):
            return self.union(value, schema, path)
        kind = schema["type"]
        logical = schema.get("logicalType")
        if logical == "decimal":
            return self.decimal(value, schema, path)
        if logical == "timestamp-millis" and kind == "long":
            return self.timestamp(value, schema, path)
        if kind == "record":
            return self.record(value, schema, path)
        if kind == "enum":
            return self.enum(value, schema, path)
        if kind == "array":
            is_array = (
                isinstance(value, list)
                if self.json
                else isinstance(value, Iterable) and not isinstance(value, _NOT_ARRAYS)
            )
            if not is_array:
                raise self.wrong(value, schema, path)
            return [self.convert(v, schema["items"], f"{path}[{i}]") for i, v in enumerate(value)]
        if kind == "map":
            if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
                raise self.wrong(value, schema, path)
            return {k: self.convert(v, schema["values"], f"{path}[]") for k, v in value.items()}
        if kind == "fixed":
            return self.primitive(value, "bytes", path, size=schema["size"], schema=schema)
        return self.convert(value, kind, path)

    def wrong(self, value: Any, schema: Any, path: str, why: str = "") -> _Invalid:
        got = _JSON_KIND.get(type(value), "value") if self.json else type(value).__name__
        where = f"field '{path}'" if path else "record"
        detail = why or f"got {got}"
        return _Invalid("wrong_type", path, f"{where} expected {self.describe(schema)}, {detail}")

    def describe(self, schema: Any) -> str:
        if isinstance(schema, str):
            return self.describe(self.named[schema]) if schema in self.named else schema
        if isinstance(schema, list):
            return " or ".join(self.describe(s) for s in schema)
        kind, logical = schema["type"], schema.get("logicalType")
        if logical == "decimal":
            return f"decimal({schema['precision']},{schema.get('scale', 0)})"
        if logical == "timestamp-millis":
            forms = "epoch millis or ISO-8601 with offset" if self.json else "datetime or millis"
            return f"timestamp-millis ({forms})"
        if kind in ("record", "enum", "fixed"):
            return f"{kind} {schema['name'].rsplit('.', 1)[-1]}"
        if kind == "array":
            return f"array of {self.describe(schema['items'])}"
        return str(kind)

    def primitive(
        self, value: Any, kind: str, path: str, size: int | None = None, schema: Any = None
    ) -> Any:
        shown = schema if schema is not None else kind
        if kind == "null":
            ok = value is None
        elif kind == "boolean":
            ok = isinstance(value, bool)
        elif kind in _INT_RANGE:
            ok = isinstance(value, int) and not isinstance(value, bool)
            low, high = _INT_RANGE[kind]
            if ok and not low <= value <= high:
                raise self.wrong(value, shown, path, "out of range")
        elif kind in ("float", "double"):
            numeric = (int, float, Decimal) if self.json else (int, float)
            if not isinstance(value, numeric) or isinstance(value, bool):
                raise self.wrong(value, shown, path)
            number = float(value)
            if self.json and not math.isfinite(number):
                raise self.wrong(value, shown, path, "not finite")
            return number
        elif kind == "string":
            ok = isinstance(value, str)
        elif kind == "bytes":
            if self.json and isinstance(value, str):  # Avro's JSON form: one char per byte
                try:
                    value = value.encode("latin-1")
                except UnicodeEncodeError:
                    raise self.wrong(value, shown, path, "not Latin-1 text") from None
            ok = isinstance(value, bytes | bytearray) and (size is None or len(value) == size)
        else:
            raise self.wrong(value, shown, path, "unsupported type")
        if not ok:
            raise self.wrong(value, shown, path)
        return value

    def union(self, value: Any, branches: list[Any], path: str) -> Any:
        if value is None:
            if "null" in branches:
                return None
            raise self.wrong(value, branches, path)
        rest = [b for b in branches if b != "null"]
        if self.json and isinstance(value, dict) and len(value) == 1:
            # Avro's own JSON encoding wraps union values: {"string": "x"}.
            ((key, inner),) = value.items()
            for branch in rest:
                if key in _type_names(branch, self.named):
                    return self.convert(inner, branch, path)
        if len(rest) == 1:
            return self.convert(value, rest[0], path)
        for branch in rest:
            try:
                return self.convert(value, branch, path)
            except _Invalid:
                continue
        raise self.wrong(value, branches, path)

    def record(self, value: Any, schema: dict[str, Any], path: str) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise self.wrong(value, schema, path)
        out: dict[str, Any] = {}
        for field in schema["fields"]:
            name = field["name"]
            child = f"{path}.{name}" if path else name
            if name in value:
                out[name] = self.convert(value[name], field["type"], child)
            elif "default" in field:  # defaults are written in Avro's JSON form
                out[name] = _Walk(self.named, True).convert(field["default"], field["type"], child)
            else:
                raise _Invalid("missing_field", child, f"missing required field '{child}'")
        if not self.json and len(out) != len(value):
            extra = sorted(str(k) for k in value if k not in out)[0]
            child = f"{path}.{extra}" if path else extra
            raise _Invalid("wrong_type", child, f"field '{child}' is not in the schema")
        return out

    def enum(self, value: Any, schema: dict[str, Any], path: str) -> str:
        if isinstance(value, str):
            if value in schema["symbols"]:
                return value
            if self.json and "default" in schema:  # as Avro resolution treats a newer symbol
                return cast(str, schema["default"])
        raise self.wrong(value, schema, path, "not one of its symbols")

    def decimal(self, value: Any, schema: dict[str, Any], path: str) -> Decimal:
        scale, precision = schema.get("scale", 0), schema["precision"]
        number: Decimal | None = None
        if isinstance(value, Decimal):
            number = value
        elif isinstance(value, int) and not isinstance(value, bool):
            number = Decimal(value)
        elif self.json and isinstance(value, str):
            try:
                number = Decimal(value.strip())
            except InvalidOperation:
                number = None
        if number is None or not number.is_finite():
            raise self.wrong(value, schema, path)
        try:
            quantized = _quantize(number, scale)
        except InvalidOperation:
            quantized = None
        if quantized is None or len(quantized.as_tuple().digits) > precision:
            raise self.wrong(value, schema, path, "too many digits")
        return quantized

    def timestamp(self, value: Any, schema: dict[str, Any], path: str) -> datetime:
        if isinstance(value, datetime) and not self.json:
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                return _EPOCH + timedelta(milliseconds=value)
            except OverflowError:
                raise self.wrong(value, schema, path, "out of range") from None
        if self.json and isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value)
                if parsed.tzinfo is None:  # guessing the zone would shift every window feature
                    raise self.wrong(value, schema, path, "got a time without a UTC offset")
                parsed = parsed.astimezone(UTC)
            except (ValueError, OverflowError):
                raise self.wrong(value, schema, path, "got an unparseable string") from None
            return parsed.replace(microsecond=parsed.microsecond // 1000 * 1000)
        raise self.wrong(value, schema, path)


def _type_names(schema: Any, named: Mapping[str, Any]) -> set[str]:
    schema = named.get(schema, schema) if isinstance(schema, str) else schema
    if isinstance(schema, str):
        return {schema}
    if isinstance(schema, dict):
        if "name" in schema:
            return {schema["name"], schema["name"].rsplit(".", 1)[-1]}
        if isinstance(schema["type"], str):
            return {schema["type"]}
    return set()


def _quantize(number: Decimal, scale: int) -> Decimal:
    # Half-even: unbiased, so rounding many amounts does not drift totals upwards.
    exponent = number.as_tuple().exponent
    if isinstance(exponent, int) and exponent == -scale:
        return number
    return number.quantize(Decimal(1).scaleb(-scale), rounding=ROUND_HALF_EVEN)


def _from_json(value: Any, schema: dict[str, Any], named: Mapping[str, Any]) -> dict[str, Any]:
    return cast(dict[str, Any], _Walk(named, True).convert(value, schema, ""))


def _diagnose(record: Any, schema: dict[str, Any], named: Mapping[str, Any]) -> _Invalid | None:
    """Why fastavro refused a record, in terms of the field; None if the walker finds no fault."""
    try:
        _Walk(named, False).convert(record, schema, "")
    except _Invalid as problem:
        return problem
    return None


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
            value = _quantize(value, scale)
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
            if isinstance(value, _NOT_ARRAYS) or value is None:
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


def _unresolvable_field(
    writer: Any, reader: Any, wnamed: Mapping[str, Any], rnamed: Mapping[str, Any], path: str = ""
) -> str | None:
    """The first reader field a writer lacks that has no default, or None.

    fastavro would fail on it only while reading, with a generic error; finding it when the
    writer schema is first seen lets the dead letter say "missing_field" and name the field.
    Other incompatibilities are left to fastavro and reported as schema_invalid.
    """
    writer = wnamed.get(writer, writer) if isinstance(writer, str) else writer
    reader = rnamed.get(reader, reader) if isinstance(reader, str) else reader
    if isinstance(reader, list):
        writers = writer if isinstance(writer, list) else [writer]
        for branch in reader:
            rb = rnamed.get(branch, branch) if isinstance(branch, str) else branch
            if not isinstance(rb, dict) or "name" not in rb:
                continue
            for candidate in writers:
                wb = wnamed.get(candidate, candidate) if isinstance(candidate, str) else candidate
                if isinstance(wb, dict) and wb.get("name") == rb["name"]:
                    found = _unresolvable_field(wb, rb, wnamed, rnamed, path)
                    if found:
                        return found
        return None
    if not (isinstance(reader, dict) and isinstance(writer, dict)):
        return None
    kind = reader["type"]
    if kind != writer.get("type"):
        return None
    if kind in ("array", "map"):
        key = "items" if kind == "array" else "values"
        return _unresolvable_field(writer[key], reader[key], wnamed, rnamed, f"{path}[]")
    if kind != "record":
        return None
    by_name = {f["name"]: f for f in writer["fields"]}
    for field in reader["fields"]:
        child = f"{path}.{field['name']}" if path else field["name"]
        names = [field["name"], *field.get("aliases", [])]
        match = next((by_name[n] for n in names if n in by_name), None)
        if match is None:
            if "default" not in field:
                return child
            continue
        found = _unresolvable_field(match["type"], field["type"], wnamed, rnamed, child)
        if found:
            return found
    return None
