"""Avro's binary encoding compiled to plain Python, one encoder and one decoder per schema.

fastavro interprets a schema on every call: it walks the schema, dispatches on each type and, for
every call, sets up its named-type and option tables. For the records the hot path moves (a
verdict, a hand-over, a transaction) that per-call and per-field dispatch is most of the cost:
measured here, a verdict took 30-43 us to encode and a 78-byte transaction 11-23 us to decode,
together about a third of the fraud lane's CPU. This module turns each schema, once, into Python
source with every field's read or write written out, and ``exec``s it.

    write, read = compile_schema(schema_dict)
    data = write(record)            # bytes, identical to fastavro.schemaless_writer's
    record, end = read(data, start)  # the record fastavro.schemaless_reader would give

It covers what this repo's schemas use: records, enums, arrays, maps, unions of null and one
type, unions of records (and null) where each record has a field of its own (the scoring event's
body: a dict's branch is the one whose own field it holds, one ``in`` where fastavro validates
the dict against every branch), the primitive types, ``timestamp-millis`` and ``decimal``
(bytes). A schema with anything else compiles to ``None`` and stays with fastavro. Neither
function validates more than it must: a value it cannot write or bytes it cannot read raise, and
the codec (``schemas.codec``) then asks fastavro, whose answer (a record, or the error that names
the field) is the reference. Tests check both directions against fastavro, byte for byte and
value for value.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Context, Decimal
from typing import Any

__all__ = ["Reader", "Writer", "compile_schema"]

Writer = Callable[[Any], bytes]
Reader = Callable[[bytes, int], tuple[Any, int]]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_NAIVE = datetime(1970, 1, 1)
_DOUBLE = struct.Struct("<d")
_FLOAT = struct.Struct("<f")
_LISTS = (list, tuple)
_STRING_CACHE_MAX = 50_000


class Unsupported(Exception):
    """A schema (at compile time) or a value (at run time) this module leaves to fastavro."""


def _varint(n: int) -> bytes:
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL = tuple(_varint(i) for i in range(-64, 64))


def _long(n: int) -> bytes:
    if type(n) is not int and type(n) is not bool:
        raise Unsupported("not an int")
    if -64 <= n < 64:
        return _SMALL[n + 64]
    if not -(2**63) <= n < 2**63:
        raise Unsupported("out of range for a long")
    return _varint(n)


def _int(n: int) -> bytes:
    if type(n) is int and not -(2**31) <= n < 2**31:
        raise Unsupported("out of range for an int")
    return _long(n)


_strings: dict[str, bytes] = {}


def _string(s: str) -> bytes:
    """Length-prefixed UTF-8, remembered: feature names, guardrail texts and enums repeat in
    every record (ids do not, so the memory is cleared whenever it fills)."""
    if type(s) is not str:
        raise Unsupported("not a str")
    data = s.encode()
    out = _long(len(data)) + data
    if len(_strings) >= _STRING_CACHE_MAX:
        _strings.clear()
    _strings[s] = out
    return out


def _bytes(b: bytes) -> bytes:
    if not isinstance(b, bytes | bytearray):
        raise Unsupported("not bytes")
    return _long(len(b)) + bytes(b)


def _timestamp_millis(value: Any) -> bytes:
    # fastavro's arithmetic exactly: whole seconds, then microseconds truncated to millis.
    if type(value) is datetime:
        delta = value - (_EPOCH if value.tzinfo is not None else _EPOCH_NAIVE)
        return _long((delta.days * 86400 + delta.seconds) * 1000 + delta.microseconds // 1000)
    return _long(value)


def _decimal_writer(scale: int, precision: int) -> Callable[[Any], bytes]:
    step = Decimal(1).scaleb(-scale)

    def write(value: Any) -> bytes:
        if type(value) is int:
            value = Decimal(value)
        if type(value) is not Decimal or not value.is_finite():
            raise Unsupported("not a finite Decimal")
        if value.as_tuple().exponent != -scale:  # as schemas.codec quantizes: half-even
            value = value.quantize(step, rounding=ROUND_HALF_EVEN)
        sign, digits, _ = value.as_tuple()
        if len(digits) > precision:
            raise Unsupported("more digits than the schema's precision")
        unscaled = int(value.scaleb(scale))
        size = ((-unscaled if sign else unscaled).bit_length() + 8) // 8
        return _long(size) + unscaled.to_bytes(size, "big", signed=True)

    return write


def _decimal_reader(scale: int, precision: int) -> Callable[[bytes], Decimal]:
    context = Context(prec=precision)

    def read(data: bytes) -> Decimal:
        return context.create_decimal(int.from_bytes(data, "big", signed=True)).scaleb(
            -scale, context)

    return read


def _long_at(b: bytes, p: int) -> tuple[int, int]:
    """A zig-zag varint from ``b`` at ``p``: (value, next position)."""
    shift = n = 0
    while True:
        c = b[p]
        p += 1
        n |= (c & 0x7F) << shift
        if c < 0x80:
            return (n >> 1) ^ -(n & 1), p
        shift += 7
        if shift > 63:
            raise Unsupported("varint longer than a long")


def _pack_doubles(n: int, values: Any) -> bytes:
    return _doubles(n).pack(*values)


def _unpack_doubles(n: int, b: bytes, p: int) -> tuple[float, ...]:
    return _doubles(n).unpack_from(b, p)


@functools.cache
def _doubles(n: int) -> struct.Struct:
    return struct.Struct(f"<{n}d")


def _timestamp_from(n: int) -> datetime:
    return _EPOCH + timedelta(microseconds=n * 1000)


class _Source:
    """Python source being written, with unique local names and the constants it refers to."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.env: dict[str, Any] = {
            "_long": _long, "_int": _int, "_string": _string, "_strings": _strings,
            "_bytes": _bytes, "_double": _DOUBLE.pack, "_float": _FLOAT.pack,
            "_ts": _timestamp_millis, "_LISTS": _LISTS, "Unsupported": Unsupported,
            "_long_at": _long_at, "_unpack_double": _DOUBLE.unpack_from,
            "_unpack_float": _FLOAT.unpack_from, "_from_ts": _timestamp_from,
            "_pack_doubles": _pack_doubles, "_unpack_doubles": _unpack_doubles,
        }
        self.count = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def const(self, value: Any, prefix: str = "_k") -> str:
        name = self.name(prefix)
        self.env[name] = value
        return name

    def emit(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)


def _named(schema: dict[str, Any], named: dict[str, Any], namespace: str) -> str:
    name = schema["name"]
    space = schema.get("namespace", namespace)
    full = name if "." in name else (f"{space}.{name}" if space else name)
    named[full] = schema
    named[full.rsplit(".", 1)[-1]] = schema
    return full.rsplit(".", 1)[0] if "." in full else ""


def _resolve(t: Any, named: dict[str, Any]) -> Any:
    if isinstance(t, str) and t in named:
        return named[t]
    if isinstance(t, dict) and isinstance(t.get("type"), dict | list):
        return t["type"]
    return t


def _null_branch(union: list[Any]) -> int | None:
    """Where "null" sits in a union of null and one other type; None for a union of records."""
    if len(union) == 2 and "null" in union:
        return union.index("null")
    return None


def _record_branches(union: list[Any], named: dict[str, Any]) -> list[tuple[int, Any, str]]:
    """(index, record schema, key) for each record of a union of records (and at most one
    "null"); ``key`` is a field no other branch has, which is how a dict says its branch.

    fastavro writes a dict as the branch sharing most field names with it (the first on a tie)
    among those it validates against. A dict holding its branch's key and only that branch's
    fields (the compiled record writer refuses any other) shares all its names with that branch
    and, the key being that branch's alone, fewer with every other: the same choice, found with
    one ``in``. A dict without any branch's key is left to fastavro. Raises Unsupported for a
    union with other members or a record with no field of its own.
    """
    schemas = [_resolve(b, named) for b in union]
    if union.count("null") > 1 or not all(
            b == "null" or (isinstance(b, dict) and b.get("type") == "record") for b in schemas):
        raise Unsupported(f"union {union}")
    fields = [{f["name"]: f for f in b["fields"]} if b != "null" else {} for b in schemas]
    out = []
    for i, b in enumerate(schemas):
        if b == "null":
            continue
        others = set().union(*(f for j, f in enumerate(fields) if j != i))
        own = [f for name, f in fields[i].items() if name not in others]
        if not own:
            raise Unsupported(f"record {b.get('name')} has no field of its own in {union}")
        # A required field if there is one, so a record written without its defaults is found.
        required = [f for f in own if "default" not in f]
        out.append((i, union[i], (required or own)[0]["name"]))
    return out


# -- writing -------------------------------------------------------------------------------------

# Primitive types written by one call on the value (the names are in _Source's environment).
_WRITE_CALLS = {"long": "_long", "int": "_int", "double": "_double", "float": "_float",
                "bytes": "_bytes"}


def _write(src: _Source, t: Any, var: str, ind: int, named: dict[str, Any], ns: str) -> None:
    """Statements appending ``var``'s encoding (type ``t``) through ``a``."""
    t = _resolve(t, named)
    if isinstance(t, list):
        null_at = _null_branch(t)
        if null_at is None:
            _write_records(src, t, var, ind, named, ns)
            return
        other = t[1 - null_at]
        src.emit(ind, f"if {var} is None:")
        src.emit(ind + 1, f"a({_long(null_at)!r})")
        src.emit(ind, "else:")
        src.emit(ind + 1, f"a({_long(1 - null_at)!r})")
        _write(src, other, var, ind + 1, named, ns)
        return
    kind = t["type"] if isinstance(t, dict) else t
    logical = t.get("logicalType") if isinstance(t, dict) else None
    if logical == "timestamp-millis" and kind == "long":
        src.emit(ind, f"a(_ts({var}))")
    elif logical == "decimal" and kind == "bytes":
        writer = src.const(_decimal_writer(t.get("scale", 0), t["precision"]), "_dec")
        src.emit(ind, f"a({writer}({var}))")
    elif logical is not None:
        raise Unsupported(f"logical type {logical}")
    elif kind == "string":
        src.emit(ind, f"a(_strings.get({var}) or _string({var}))")
    elif kind in _WRITE_CALLS:
        src.emit(ind, f"a({_WRITE_CALLS[kind]}({var}))")
    elif kind == "boolean":
        src.emit(ind, f"a(b'\\x01' if {var} else b'\\x00')")
    elif kind == "null":
        src.emit(ind, f"if {var} is not None:")
        src.emit(ind + 1, "raise Unsupported('null expected')")
    elif kind == "enum":
        _named(t, named, ns)
        table = src.const({s: _long(i) for i, s in enumerate(t["symbols"])}, "_enum")
        src.emit(ind, f"a({table}[{var}])")
    elif kind == "array" and t["items"] == "double":  # feature vectors: one pack for all
        src.emit(ind, f"if type({var}) not in _LISTS:")
        src.emit(ind + 1, "raise Unsupported('array expected')")
        src.emit(ind, f"if {var}:")
        src.emit(ind + 1, f"a(_long(len({var})))")
        src.emit(ind + 1, f"a(_pack_doubles(len({var}), {var}))")
        src.emit(ind, "a(b'\\x00')")
    elif kind == "array":
        item = src.name("_i")
        src.emit(ind, f"if type({var}) not in _LISTS:")
        src.emit(ind + 1, "raise Unsupported('array expected')")
        src.emit(ind, f"if {var}:")
        src.emit(ind + 1, f"a(_long(len({var})))")
        src.emit(ind + 1, f"for {item} in {var}:")
        _write(src, t["items"], item, ind + 2, named, ns)
        src.emit(ind, "a(b'\\x00')")
    elif kind == "map":
        key, value = src.name("_k"), src.name("_v")
        src.emit(ind, f"if type({var}) is not dict:")
        src.emit(ind + 1, "raise Unsupported('dict expected')")
        src.emit(ind, f"if {var}:")
        src.emit(ind + 1, f"a(_long(len({var})))")
        src.emit(ind + 1, f"for {key}, {value} in {var}.items():")
        src.emit(ind + 2, f"a(_strings.get({key}) or _string({key}))")
        _write(src, t["values"], value, ind + 2, named, ns)
        src.emit(ind, "a(b'\\x00')")
    elif kind == "record":
        inner_ns = _named(t, named, ns)
        names = src.const(frozenset(f["name"] for f in t["fields"]), "_names")
        # fastavro (strict) refuses a field the schema lacks: a typo must not vanish silently.
        src.emit(ind, f"if type({var}) is not dict or not {names}.issuperset({var}):")
        src.emit(ind + 1, "raise Unsupported('a dict holding only schema fields expected')")
        for f in t["fields"]:
            field = src.name("_f")
            if "default" in f:
                default = src.const(f["default"])
                src.emit(ind, f"{field} = {var}.get({f['name']!r}, {default})")
            else:
                src.emit(ind, f"{field} = {var}[{f['name']!r}]")
            _write(src, f["type"], field, ind, named, inner_ns)
    else:
        raise Unsupported(f"type {kind}")


def _write_records(src: _Source, t: list[Any], var: str, ind: int, named: dict[str, Any],
                   ns: str) -> None:
    """A union of records: the branch is the one whose own field the dict holds
    (``_record_branches``); ``None`` is the null branch, if any."""
    if "null" in t:
        src.emit(ind, f"if {var} is None:")
        src.emit(ind + 1, f"a({_long(t.index('null'))!r})")
        src.emit(ind, f"elif type({var}) is not dict:")
    else:
        src.emit(ind, f"if type({var}) is not dict:")
    src.emit(ind + 1, "raise Unsupported('a dict expected')")
    for index, branch, key in _record_branches(t, named):
        src.emit(ind, f"elif {key!r} in {var}:")
        src.emit(ind + 1, f"a({_long(index)!r})")
        _write(src, branch, var, ind + 1, named, ns)
    src.emit(ind, "else:")
    src.emit(ind + 1, "raise Unsupported('no union branch named by a field')")


# -- reading -------------------------------------------------------------------------------------

def _read_long(src: _Source, target: str, ind: int) -> None:
    """``target`` = the varint at ``p``; the one-byte case (most lengths, counts, enums) inline."""
    src.emit(ind, "c = b[p]")
    src.emit(ind, "if c < 128:")
    src.emit(ind + 1, f"{target} = (c >> 1) ^ -(c & 1)")
    src.emit(ind + 1, "p += 1")
    src.emit(ind, "else:")
    src.emit(ind + 1, f"{target}, p = _long_at(b, p)")


def _read_sized(src: _Source, target: str, ind: int, convert: str) -> None:
    n = src.name("_n")
    _read_long(src, n, ind)
    src.emit(ind, f"if {n} < 0 or p + {n} > len(b):")
    src.emit(ind + 1, "raise Unsupported('bad length')")
    src.emit(ind, f"{target} = {convert.format(f'b[p:p + {n}]')}")
    src.emit(ind, f"p += {n}")


def _read(src: _Source, t: Any, target: str, ind: int, named: dict[str, Any], ns: str) -> None:
    """Statements that set ``target`` to the value of type ``t`` at ``p`` and advance ``p``."""
    t = _resolve(t, named)
    if isinstance(t, list) and _null_branch(t) is None:  # a union of records
        _record_branches(t, named)  # the writer's check, so both compile or neither does
        branch = src.name("_u")
        _read_long(src, branch, ind)
        for index, member in enumerate(t):
            src.emit(ind, f"{'if' if index == 0 else 'elif'} {branch} == {index}:")
            _read(src, member, target, ind + 1, named, ns)
        src.emit(ind, "else:")
        src.emit(ind + 1, "raise Unsupported('bad union branch')")
        return
    if isinstance(t, list):
        null_at = _null_branch(t)
        assert null_at is not None
        branch = src.name("_u")
        _read_long(src, branch, ind)
        src.emit(ind, f"if {branch} == {null_at}:")
        src.emit(ind + 1, f"{target} = None")
        src.emit(ind, f"elif {branch} == {1 - null_at}:")
        _read(src, t[1 - null_at], target, ind + 1, named, ns)
        src.emit(ind, "else:")
        src.emit(ind + 1, "raise Unsupported('bad union branch')")
        return
    kind = t["type"] if isinstance(t, dict) else t
    logical = t.get("logicalType") if isinstance(t, dict) else None
    if logical == "timestamp-millis" and kind == "long":
        n = src.name("_n")
        _read_long(src, n, ind)
        src.emit(ind, f"{target} = _from_ts({n})")
    elif logical == "decimal" and kind == "bytes":
        reader = src.const(_decimal_reader(t.get("scale", 0), t["precision"]), "_dec")
        _read_sized(src, target, ind, reader + "({})")
    elif logical is not None:
        raise Unsupported(f"logical type {logical}")
    elif kind == "string":
        _read_sized(src, target, ind, "{}.decode()")
    elif kind == "bytes":
        _read_sized(src, target, ind, "{}")
    elif kind in ("long", "int"):
        _read_long(src, target, ind)
    elif kind == "double":
        src.emit(ind, f"{target} = _unpack_double(b, p)[0]")
        src.emit(ind, "p += 8")
    elif kind == "float":
        src.emit(ind, f"{target} = _unpack_float(b, p)[0]")
        src.emit(ind, "p += 4")
    elif kind == "boolean":
        src.emit(ind, "c = b[p]")
        src.emit(ind, "if c > 1:")
        src.emit(ind + 1, "raise Unsupported('bad boolean')")
        src.emit(ind, f"{target} = c == 1")
        src.emit(ind, "p += 1")
    elif kind == "null":
        src.emit(ind, f"{target} = None")
    elif kind == "enum":
        _named(t, named, ns)
        symbols = src.const(tuple(t["symbols"]), "_syms")
        n = src.name("_n")
        _read_long(src, n, ind)
        src.emit(ind, f"if not 0 <= {n} < {len(t['symbols'])}:")
        src.emit(ind + 1, "raise Unsupported('bad enum index')")
        src.emit(ind, f"{target} = {symbols}[{n}]")
    elif kind in ("array", "map"):
        count, item, key = src.name("_c"), src.name("_i"), src.name("_k")
        src.emit(ind, f"{target} = {'[]' if kind == 'array' else '{}'}")
        src.emit(ind, "while True:")
        _read_long(src, count, ind + 1)
        src.emit(ind + 1, f"if {count} == 0:")
        src.emit(ind + 2, "break")
        src.emit(ind + 1, f"if {count} < 0:")  # a block with its byte size (Java writers)
        src.emit(ind + 2, f"{count} = -{count}")
        _read_long(src, src.name("_size"), ind + 2)
        if kind == "array" and t["items"] == "double":  # feature vectors: one unpack for all
            src.emit(ind + 1, f"{target} += _unpack_doubles({count}, b, p)")
            src.emit(ind + 1, f"p += 8 * {count}")
            return
        src.emit(ind + 1, f"for _ in range({count}):")
        if kind == "array":
            _read(src, t["items"], item, ind + 2, named, ns)
            src.emit(ind + 2, f"{target}.append({item})")
        else:
            _read_sized(src, key, ind + 2, "{}.decode()")
            _read(src, t["values"], item, ind + 2, named, ns)
            src.emit(ind + 2, f"{target}[{key}] = {item}")
    elif kind == "record":
        inner_ns = _named(t, named, ns)
        fields = []
        for f in t["fields"]:
            field = src.name("_f")
            _read(src, f["type"], field, ind, named, inner_ns)
            fields.append(f"{f['name']!r}: {field}")
        src.emit(ind, f"{target} = {{{', '.join(fields)}}}")
    else:
        raise Unsupported(f"type {kind}")


def compile_schema(schema: dict[str, Any]) -> tuple[Writer, Reader] | None:
    """(write, read) for a record schema as JSON (the .avsc), or None if it uses something this
    module leaves to fastavro."""
    try:
        writer = _Source()
        writer.emit(0, "def write(v):")
        writer.emit(1, "out = []")
        writer.emit(1, "a = out.append")
        _write(writer, schema, "v", 1, {}, "")
        writer.emit(1, "return b''.join(out)")
        reader = _Source()
        reader.emit(0, "def read(b, p):")
        _read(reader, schema, "r", 1, {}, "")
        reader.emit(1, "return r, p")
    except (Unsupported, KeyError, TypeError):
        return None
    name = schema.get("name", "record")
    exec(compile("\n".join(writer.lines), f"<avro write {name}>", "exec"), writer.env)
    exec(compile("\n".join(reader.lines), f"<avro read {name}>", "exec"), reader.env)
    return writer.env["write"], reader.env["read"]
