"""The `trustledger-export/v1` file: JSON Lines, one tagged object per line.

A chain (or a range of it) exported for offline verification. UTF-8, one JSON
object per line, each line ends with "\\n", every object has a `type`:

1. `header`: format, chain, the range `from_seq`..`to_seq`, the chain's size
   when exported, the ledger's name (the note key name) and the export time.
2. `entry` lines of the ledger's own chain `_ledger` (its key registrations).
3. when `from_seq` > 1: a `publisher_key` line per key id registered in the
   chain before `from_seq` (vouched for by the trailer signature only).
4. `prev`: seq `from_seq` - 1 and its entry hash (32 zero bytes for seq 0).
5. `checkpoint` lines: the signed notes of every checkpoint of size >=
   `from_seq` - 1, smallest first; one of them is at `to_seq`.
6. `entry` lines of the chain, `from_seq`..`to_seq`.
7. `end`: the number of entries, BLAKE3 of every byte before this line (hex),
   and the ledger key's Ed25519 signature (base64url) over
   `trustledger/export/v1` 0x00 || digest.

Checkpoints come before the entries so a verifier knows, while streaming,
which heads to compare. Pure: no I/O here.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Annotated

import msgspec

from service.domain.audit import AuditEntry

FORMAT = "trustledger-export/v1"
SIGNATURE_DOMAIN = b"trustledger/export/v1\x00"
MEDIA_TYPE = "application/x-ndjson"
MAX_LINE_BYTES = 4 * 1024 * 1024
"""The longest line a verifier reads, LF included (docs/ledger-format.md §13.1)."""
LEDGER_NAME = re.compile(r"[A-Za-z0-9._~/:-]{1,200}")
"""A ledger name, which is also its key's note key name (§12.1); use `fullmatch`."""
_EXPORTED_AT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{6})?Z")

HexHash = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]
HexBytes = Annotated[str, msgspec.Meta(pattern="^(?:[0-9a-f]{2})*$")]
Seq = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
Micros = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]


class ExportFormatError(ValueError):
    """A line that is not one of the export's line types."""


class _Line(msgspec.Struct, tag_field="type", forbid_unknown_fields=True):
    pass


class Header(_Line, tag="header"):
    format: str
    chain: str
    from_seq: Seq
    to_seq: Seq
    chain_size: Seq
    ledger_name: str
    exported_at: Annotated[datetime, msgspec.Meta(tz=True)]


class EntryLine(_Line, tag="entry"):
    chain: str
    seq: Seq
    received_at_us: Micros
    key_id: str
    signature: HexBytes
    event: str
    """The event bytes decoded as UTF-8 (admitted events always are)."""
    prev_hash: HexHash
    entry_hash: HexHash


class PublisherKeyLine(_Line, tag="publisher_key"):
    key_id: str
    public_key: str
    """base64url without padding."""
    label: str
    active: bool


class PrevLine(_Line, tag="prev"):
    seq: Seq
    entry_hash: HexHash


class CheckpointLine(_Line, tag="checkpoint"):
    note: str


class EndLine(_Line, tag="end"):
    entries: Seq
    digest: HexHash
    key_name: str
    key_id: str
    signature: str
    """base64url without padding."""


ExportLine = Header | EntryLine | PublisherKeyLine | PrevLine | CheckpointLine | EndLine

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[ExportLine] = msgspec.json.Decoder(ExportLine)


def encode_line(line: ExportLine) -> bytes:
    """One line of the file, newline-terminated."""
    return _encoder.encode(line) + b"\n"


class _HeaderSpelling(msgspec.Struct):
    exported_at: str


_header_spelling = msgspec.json.Decoder(_HeaderSpelling)


def decode_line(raw: bytes) -> ExportLine:
    """Parse one line (with or without its newline); raises `ExportFormatError`.

    The rules of docs/ledger-format.md §13.1-13.2 (check L5): one UTF-8 JSON
    object of a line type, exactly its members with their types and ranges, no
    member twice, no escaped lone surrogate, `exported_at` in its one spelling,
    and the `end` line exactly as the writer spells it (nothing signs its bytes)."""
    body = raw[:-1] if raw.endswith(b"\n") else raw
    try:
        item = _decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise ExportFormatError(str(e)) from e
    # A re-encoding equal to the line cannot hide a repeated member; only lines
    # not in the writer's spelling pay for a second, pair-by-pair parse.
    if _encoder.encode(item) != body:
        if isinstance(item, EndLine):
            raise ExportFormatError(
                f"the end line is not in its one spelling: {_encoder.encode(item).decode()}"
            )
        try:
            json.loads(body, object_pairs_hook=_unique_members)
        except ValueError as e:
            raise ExportFormatError(str(e)) from e
    if isinstance(item, Header):
        spelling = _header_spelling.decode(body).exported_at
        if not _EXPORTED_AT.fullmatch(spelling):
            raise ExportFormatError(
                f"exported_at {spelling[:40]!r} is not YYYY-MM-DDThh:mm:ss[.ffffff]Z"
            )
    return item


def _unique_members(pairs: list[tuple[str, object]]) -> dict[str, object]:
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"member {', '.join(repeated)} appears more than once")
    return dict(pairs)


def entry_line(entry: AuditEntry) -> EntryLine:
    """An entry as exported.

    Admitted event bytes are valid UTF-8, so `event` is exact. Bytes that are not
    were altered after admission: they are written with U+FFFD replacements, and
    the entry hash then names the entry to whoever verifies the file."""
    return EntryLine(
        chain=entry.chain,
        seq=entry.seq,
        received_at_us=entry.received_at_us,
        key_id=entry.key_id,
        signature=entry.signature.hex(),
        event=entry.event.decode("utf-8", errors="replace"),
        prev_hash=entry.prev_hash.hex(),
        entry_hash=entry.entry_hash.hex(),
    )


def audit_entry(line: EntryLine) -> AuditEntry:
    """What the auditor checks; raises `ExportFormatError` if the event is not UTF-8."""
    try:
        event = line.event.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ExportFormatError(f"event is not valid UTF-8: {e.reason}") from e
    return AuditEntry(
        chain=line.chain,
        seq=line.seq,
        received_at_us=line.received_at_us,
        key_id=line.key_id,
        signature=bytes.fromhex(line.signature),
        event=event,
        prev_hash=bytes.fromhex(line.prev_hash),
        entry_hash=bytes.fromhex(line.entry_hash),
    )


def signed_message(digest: bytes) -> bytes:
    """What the trailer's signature covers."""
    return SIGNATURE_DOMAIN + digest
