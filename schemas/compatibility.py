"""Whether a writer schema can be read as a repo schema, checked once, when it is first seen.

Producers are upgraded one at a time, so the codec meets writer schemas older or newer than the
repo's. Knowing up front which writer cannot fill a reader field lets the codec turn each of its
records into a dead letter that names the field, instead of a generic read error per record.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def unresolvable_field(
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
                    found = unresolvable_field(wb, rb, wnamed, rnamed, path)
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
        return unresolvable_field(writer[key], reader[key], wnamed, rnamed, f"{path}[]")
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
        found = unresolvable_field(match["type"], field["type"], wnamed, rnamed, child)
        if found:
            return found
    return None
