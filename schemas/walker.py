"""Walking a parsed Avro schema beside a value: JSON into Avro's Python form, and what does not fit.

fastavro covers the binary hot path. What it does not give us is (a) JSON -> Avro's Python form
with errors that name the field, and (b) a readable reason when encoding fails. One walker over
parsed schemas serves both; ``json`` selects the lenient source forms JSON needs (strings for
money and time, unknown enum symbols resolved to the default, extra fields ignored). Messages
name the field and the expected type, never the value, because values may carry card data.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any, Literal, cast

from schemas.clock import whole_millis

# The decode reasons (``schemas.codec.DecodeReason``) a walk can find.
Fault = Literal["missing_field", "wrong_type"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
NOT_ARRAYS = (str, bytes, bytearray, Mapping)  # iterable, yet never meant as an Avro array
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


class Invalid(Exception):
    """A value that does not fit its schema: why, at which field, in words safe to log."""

    def __init__(self, reason: Fault, field: str, message: str) -> None:
        super().__init__(message)
        self.reason: Fault = reason
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
                else isinstance(value, Iterable) and not isinstance(value, NOT_ARRAYS)
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

    def wrong(self, value: Any, schema: Any, path: str, why: str = "") -> Invalid:
        got = _JSON_KIND.get(type(value), "value") if self.json else type(value).__name__
        where = f"field '{path}'" if path else "record"
        detail = why or f"got {got}"
        return Invalid("wrong_type", path, f"{where} expected {self.describe(schema)}, {detail}")

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
            except Invalid:
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
                raise Invalid("missing_field", child, f"missing required field '{child}'")
        if not self.json and len(out) != len(value):
            extra = sorted(str(k) for k in value if k not in out)[0]
            child = f"{path}.{extra}" if path else extra
            raise Invalid("wrong_type", child, f"field '{child}' is not in the schema")
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
            quantized = quantize(number, scale)
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
            return whole_millis(parsed)
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


def quantize(number: Decimal, scale: int) -> Decimal:
    """Money at the schema's scale."""
    # Half-even: unbiased, so rounding many amounts does not drift totals upwards.
    exponent = number.as_tuple().exponent
    if isinstance(exponent, int) and exponent == -scale:
        return number
    return number.quantize(Decimal(1).scaleb(-scale), rounding=ROUND_HALF_EVEN)


def from_json(value: Any, schema: dict[str, Any], named: Mapping[str, Any]) -> dict[str, Any]:
    """A decoded JSON record in exactly the form Avro decoding gives; raises ``Invalid``."""
    return cast(dict[str, Any], _Walk(named, True).convert(value, schema, ""))


def diagnose(record: Any, schema: dict[str, Any], named: Mapping[str, Any]) -> Invalid | None:
    """Why fastavro refused a record, in terms of the field; None if the walker finds no fault."""
    try:
        _Walk(named, False).convert(record, schema, "")
    except Invalid as problem:
        return problem
    return None
