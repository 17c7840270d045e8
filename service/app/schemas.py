"""The published JSON Schema files, generated from the wire contract.

`service.domain.events` is the single source of truth; the files under
`schemas/` are rendered from it here (`trustledger schemas write`) and a test
fails when the checked-in files are stale. Rendering is deterministic: sorted
keys, two-space indent, a trailing newline, UTF-8.

Members in `events.ADMISSION_REQUIRED` are listed as required: the decoder
takes them absent (for events admitted before they existed), admission does not.

The description of each object comes from its Struct's docstring, cleaned here
with `inspect.cleandoc`, never as msgspec renders it: msgspec changed that
rendering between releases (0.23 dedents, earlier ones did not), and the
checked-in files must not depend on the installed version.

Layout (names relative to `schemas/`):

* `event.schema.json` - the whole tagged union, discriminated on `kind`;
* `events/<kind>.schema.json` - one event type each.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import msgspec

from service.domain import events
from service.domain.events import (
    ADMISSION_REQUIRED,
    EVENT_TYPES,
    MAX_EVENT_BYTES,
    MAX_JSON_DEPTH,
    Event,
)

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_BASE_URI = "https://trustledger.dev/schemas/v1/"
EVENT_SCHEMA_NAME = "event.schema.json"


def event_schema_name(kind: str) -> str:
    """The file name (relative to `schemas/`) of the schema for one event kind."""
    return f"events/{kind}.schema.json"


def render_schemas() -> dict[str, bytes]:
    """Every schema file, by name relative to `schemas/`, with its exact bytes."""
    union = _with_own_descriptions(msgspec.json.schema(Event))
    files: dict[str, dict[str, object]] = {
        EVENT_SCHEMA_NAME: _document(
            EVENT_SCHEMA_NAME,
            union,
            title="TrustLedger event",
            description=(
                "Any event a publisher may put on NATS: a tagged union on `kind`. "
                "Unknown fields are refused; times are RFC 3339 in UTC; amounts are "
                "integers in minor units. Bounds beyond this schema: at most "
                f"{MAX_EVENT_BYTES} bytes of UTF-8 JSON, nesting at most {MAX_JSON_DEPTH} "
                "arrays and objects deep, no repeated member name, no escaped lone "
                "surrogate, no NaN or Infinity."
            ),
        )
    }
    for struct in EVENT_TYPES:
        kind = _kind_of(struct)
        name = event_schema_name(kind)
        schema = _with_own_descriptions(msgspec.json.schema(struct))
        files[name] = _document(
            name,
            schema,
            title=f"TrustLedger event: {kind}",
            description=_summary(struct),
        )
    return {name: _dump(document) for name, document in sorted(files.items())}


def write_schemas(dir: Path) -> list[Path]:
    """Write the schema files that are missing or different under `dir`.

    Files already current are left untouched; returns the paths written."""
    written: list[Path] = []
    for name, content in render_schemas().items():
        path = dir / name
        if _read(path) == content:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        written.append(path)
    return written


def stale_schemas(dir: Path) -> list[str]:
    """Names (relative to `dir`) of schema files that are missing or different."""
    return [name for name, content in render_schemas().items() if _read(dir / name) != content]


def _with_own_descriptions(schema: dict[str, object]) -> dict[str, object]:
    """`schema` with each definition's description replaced by its cleaned docstring."""
    definitions = schema.get("$defs")
    if not isinstance(definitions, dict):
        return schema
    own: dict[str, object] = {}
    for name, definition in definitions.items():
        struct = getattr(events, name, None)
        if not (isinstance(struct, type) and issubclass(struct, msgspec.Struct)):
            raise TypeError(f"schema definition {name!r} is not a Struct of service.domain.events")
        if not isinstance(definition, dict):
            raise TypeError(f"schema definition {name!r} is not an object")
        rest = {key: value for key, value in definition.items() if key != "description"}
        admission_required = ADMISSION_REQUIRED.get(struct, ())
        if admission_required:
            # Publishers validate against these files: show what admission requires.
            required = rest.get("required")
            listed = list(required) if isinstance(required, list) else []
            rest["required"] = listed + [n for n in admission_required if n not in listed]
        doc = struct.__doc__
        own[name] = {**rest, "description": inspect.cleandoc(doc)} if doc else rest
    return {**schema, "$defs": own}


def _document(
    name: str, schema: dict[str, object], *, title: str, description: str
) -> dict[str, object]:
    return {
        **schema,
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": SCHEMA_BASE_URI + name,
        "title": title,
        "description": description,
    }


def _dump(document: dict[str, object]) -> bytes:
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"
    return text.encode("utf-8")


def _kind_of(struct: type[msgspec.Struct]) -> str:
    tag = struct.__struct_config__.tag
    if not isinstance(tag, str):
        raise TypeError(f"{struct.__name__} has no string `kind` tag")
    return tag


def _summary(struct: type[msgspec.Struct]) -> str:
    doc = (struct.__doc__ or "").strip()
    first_paragraph = doc.split("\n\n", 1)[0]
    return " ".join(first_paragraph.split())


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
