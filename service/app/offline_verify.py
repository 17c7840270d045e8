"""Verify a `trustledger-export/v1` file offline: no database, no network.

The file is read one line at a time (memory does not grow with the chain) and
checked with the same `ChainAuditor` the service runs online:

* the ledger's key chain `_ledger` (§6), which yields the ledger keys;
* every checkpoint note: signed by a registered ledger key, origin
  `<ledger name>/<chain>`, no larger than the chain size the export states
  (a larger one proves entries were removed from the end), and its head
  compared with the recomputed chain when the walk reaches it;
* every entry of the range (§6), from the key state and link before it, with
  signatures checked in batches over a few threads;
* a checkpoint at the range's last entry, so every entry is covered by a
  signature of the ledger;
* the trailer: entry count, BLAKE3 digest of everything before it, and the
  ledger key's signature over that digest;
* checkpoints the auditor kept from earlier (`trusted_checkpoints`): each must
  verify and agree with the export.

The first thing that does not hold is reported as a `Finding`, naming the
chain and seq (and the line, for a line that is not what it should be).
Imports nothing that talks to a database or a broker.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from os import PathLike
from typing import BinaryIO, NoReturn

import blake3

from service.domain.audit import (
    LEDGER_CHAIN,
    AuditEntry,
    ChainAuditor,
    Finding,
    KeyState,
    VerifyMany,
    checkpoint_with_ledger_keys,
    parallel_verifier,
)
from service.domain.chain import GENESIS_PREV_HASH
from service.domain.checkpoint import (
    MAX_NOTE_BYTES,
    CheckpointError,
    origin_for,
    parse_body,
    split_note,
)
from service.domain.events import SLUG_PATTERN
from service.domain.export_format import (
    FORMAT,
    LEDGER_NAME,
    MAX_LINE_BYTES,
    CheckpointLine,
    EndLine,
    EntryLine,
    ExportFormatError,
    ExportLine,
    Header,
    PrevLine,
    PublisherKeyLine,
    audit_entry,
    decode_line,
    signed_message,
)
from service.domain.signing import from_b64url, key_id_for, verify_signature
from service.errors import ConfigError

BATCH = 2000
Progress = Callable[[int], None]
_SLUG = re.compile(SLUG_PATTERN)

# Sections of the file, in the order they must come.
_START, _LEDGER, _KEYS, _CHECKPOINTS, _ENTRIES, _DONE = range(6)
_SECTION_NAMES = {
    _START: "the header",
    _LEDGER: "the ledger's key entries",
    _KEYS: "the publisher keys",
    _CHECKPOINTS: "the checkpoints",
    _ENTRIES: "the entries",
    _DONE: "the trailer",
}


@dataclass(frozen=True, slots=True)
class Report:
    """The outcome: `finding` is None when everything holds."""

    finding: Finding | None
    chain: str
    entries: int
    """Entries of the exported chain verified."""
    checkpoints: int
    """Checkpoint notes verified (the export's and the trusted ones)."""
    signatures: int
    """Ed25519 signatures verified: entries of both chains, checkpoints, the trailer."""
    seconds: float
    line: int | None = None
    """The line the finding was made at, when there is one."""

    @property
    def ok(self) -> bool:
        return self.finding is None

    @property
    def rate(self) -> float:
        """Entries per second."""
        return self.entries / self.seconds if self.seconds > 0 else 0.0


class _Failed(Exception):
    def __init__(self, finding: Finding, line: int | None) -> None:
        super().__init__(str(finding))
        self.finding = finding
        self.line = line


def verify_export(
    source: str | PathLike[str] | BinaryIO,
    progress: Progress | None = None,
    trusted_checkpoints: Iterable[str] = (),
    threads: int = 2,
    pinned_ledger_keys: Iterable[bytes] = (),
) -> Report:
    """Verify an export file (a path, or a binary stream read line by line).

    `pinned_ledger_keys` are ledger public keys the auditor obtained on their
    own (e.g. from GET /v1/ledger/keys on an earlier day): the file's `_ledger`
    chain must begin with the registration of one of them, so a file that
    brings a ledger of its own is refused."""
    started = time.monotonic()
    with ThreadPoolExecutor(max(1, threads)) as pool:
        verifier = _ExportVerifier(
            parallel_verifier(pool if threads > 1 else None, max(1, threads)),
            progress,
            list(trusted_checkpoints),
            list(pinned_ledger_keys),
        )
        finding: Finding | None = None
        line: int | None = None
        try:
            if isinstance(source, str | PathLike):
                with open(source, "rb") as stream:
                    verifier.run(stream)
            else:
                verifier.run(source)
        except _Failed as failed:
            finding, line = failed.finding, failed.line
    return Report(
        finding=finding,
        chain=verifier.chain,
        entries=verifier.entries,
        checkpoints=verifier.checkpoints,
        signatures=verifier.signatures,
        seconds=time.monotonic() - started,
        line=line,
    )


class _ExportVerifier:
    """One pass over one file; stops (raises `_Failed`) at the first finding."""

    def __init__(
        self,
        verify_many: VerifyMany,
        progress: Progress | None,
        trusted: list[str],
        pinned: list[bytes],
    ):
        self.verify_many = verify_many
        self.pinned = pinned
        self.progress = progress
        self.trusted = trusted
        self.hasher = blake3.blake3()
        self.section = _START
        self.line = 0
        self.chain = "export"  # until the header names the chain
        self.header: Header | None = None
        self.ledger = ChainAuditor(LEDGER_CHAIN)
        self.ledger_keys = KeyState()
        self.keys = KeyState()
        self.auditor: ChainAuditor | None = None
        self.batch: list[AuditEntry] = []
        self.batch_lines: list[int] = []
        self.last_checkpoint = -1
        self.last_in_range: int | None = None
        self.beyond: dict[int, bytes] = {}
        self.entries = 0
        self.checkpoints = 0
        self.signatures = 0

    # -- reading ---------------------------------------------------------------------

    def run(self, stream: BinaryIO) -> None:
        # readline with a limit: a file without LF never makes memory grow past a line.
        while raw := stream.readline(MAX_LINE_BYTES + 1):
            self.line += 1
            if self.section == _DONE:
                self._fail(f"line {self.line} follows the trailer", None, "end of file", "a line")
            if len(raw) > MAX_LINE_BYTES:
                self._flush()
                self._fail(
                    f"line {self.line} is too long", self._next_seq(),
                    f"at most {MAX_LINE_BYTES} bytes with its LF", f"more than {MAX_LINE_BYTES}",
                )  # fmt: skip
            if not raw.endswith(b"\n"):
                self._flush()
                self._fail(
                    f"line {self.line} is cut off", self._next_seq(),
                    "a newline-terminated line", f"{len(raw)} bytes without a newline",
                )  # fmt: skip
            cr = raw.find(b"\r")
            if cr >= 0:
                self._flush()
                self._fail(
                    f"line {self.line} holds a CR byte", self._next_seq(),
                    "no 0x0D byte (lines end with LF alone)", f"CR at byte {cr + 1} of the line",
                )  # fmt: skip
            try:
                item = decode_line(raw)
            except ExportFormatError as e:
                self._flush()
                self._fail(
                    f"line {self.line} is not an export line", self._next_seq(),
                    "a JSON object of a known line type", str(e),
                )  # fmt: skip
            if isinstance(item, EndLine):
                self._end(item)
                continue
            self.hasher.update(raw)
            self._line(item)
        if self.section != _DONE:
            self._flush()
            self._fail(
                "the export ends without its trailer", self._next_seq(),
                "an end line", f"end of file after line {self.line}",
            )  # fmt: skip

    def _line(self, item: ExportLine) -> None:
        if isinstance(item, Header):
            self._header(item)
        elif self.section == _START:
            self._fail(
                "the export does not start with a header", None, "a header line", item_type(item)
            )
        elif isinstance(item, EntryLine):
            self._entry(item)
        elif isinstance(item, PublisherKeyLine):
            self._publisher_key(item)
        elif isinstance(item, PrevLine):
            self._prev(item)
        elif isinstance(item, CheckpointLine):
            if self.section != _CHECKPOINTS:
                self._out_of_order(item)
            self._checkpoint(item.note, trusted=False)

    def _out_of_order(self, item: ExportLine) -> NoReturn:
        self._flush()
        self._fail(
            f"line {self.line} is out of order", self._next_seq(),
            f"a line of {_SECTION_NAMES[self.section]} or what follows",
            f"a {item_type(item)} line",
        )  # fmt: skip

    def _fail(
        self,
        problem: str,
        seq: int | None,
        expected: str = "",
        found: str = "",
        line: int | None = None,
    ) -> NoReturn:
        raise _Failed(Finding(self.chain, seq, problem, expected, found), line or self.line)

    def _next_seq(self) -> int | None:
        """The seq the current line would hold, in the entries section."""
        if self.auditor is None or self.header is None or self.section < _CHECKPOINTS:
            return None
        seq = self.auditor.last_seq + len(self.batch) + 1
        return seq if seq <= self.header.to_seq else None

    # -- sections ------------------------------------------------------------------------

    def _header(self, h: Header) -> None:
        if self.section != _START:
            self._flush()
            self._fail(
                f"line {self.line} is a second header", None, "one header, on line 1", "another"
            )
        if h.format != FORMAT:
            self._fail("unsupported export format", None, FORMAT, h.format)
        if h.chain == LEDGER_CHAIN or not _slug(h.chain):
            self._fail("the header names no org chain", None, "an org id", repr(h.chain))
        self.chain = h.chain
        if not 1 <= h.from_seq <= h.to_seq <= h.chain_size:
            self._fail(
                "the header's range is impossible", None,
                "1 <= from_seq <= to_seq <= chain_size",
                f"{h.from_seq}, {h.to_seq}, {h.chain_size}",
            )  # fmt: skip
        if not LEDGER_NAME.fullmatch(h.ledger_name):
            self._fail("the header names no valid ledger name", None,
                       "1-200 characters of A-Z a-z 0-9 . _ ~ / : -", repr(h.ledger_name[:210]))  # fmt: skip
        self.header = h
        self.section = _LEDGER

    def _entry(self, line: EntryLine) -> None:
        if self.section == _LEDGER and line.chain == LEDGER_CHAIN:
            self._add(line)
            return
        if self.section == _CHECKPOINTS:
            self._close_checkpoints()
        if self.section != _ENTRIES:
            self._out_of_order(line)
        assert self.header is not None
        if line.seq > self.header.to_seq:
            self._flush()
            self._fail("an entry beyond the range", line.seq,
                       f"seqs up to {self.header.to_seq}", f"seq {line.seq}")  # fmt: skip
        self._add(line)

    def _add(self, line: EntryLine) -> None:
        try:
            entry = audit_entry(line)
        except ExportFormatError as e:
            self._flush()
            self._fail(
                f"line {self.line} holds an invalid entry", line.seq, "UTF-8 event text", str(e)
            )
        self.batch.append(entry)
        self.batch_lines.append(self.line)
        if len(self.batch) >= BATCH:
            self._flush()

    def _flush(self) -> None:
        """Check the entries read so far (ledger's or the chain's, by section)."""
        if not self.batch:
            return
        batch, lines = self.batch, self.batch_lines
        self.batch, self.batch_lines = [], []
        auditor = self.ledger if self.section == _LEDGER else self.auditor
        assert auditor is not None
        finding = auditor.check(batch, self.verify_many)
        if finding is not None:
            at = auditor.failed_at
            raise _Failed(finding, lines[at] if at is not None else self.line)
        self.signatures += len(batch)
        if auditor is not self.ledger:
            self.entries += len(batch)
            if self.progress is not None:
                self.progress(len(batch))

    def _close_ledger(self) -> None:
        self._flush()
        finding = self.ledger.finish()
        if finding is not None:
            raise _Failed(finding, self.line)
        self.ledger_keys = self.ledger.keys
        if self.pinned and self.ledger.first_key not in self.pinned:
            found = self.ledger.first_key.hex() if self.ledger.first_key else "none"
            raise _Failed(
                Finding(LEDGER_CHAIN, 1, "the ledger's first key is not the pinned ledger key",
                        " or ".join(k.hex() for k in self.pinned), found),
                self.line,
            )  # fmt: skip
        if self.pinned and self.ledger.later_self_signed is not None:
            raise _Failed(
                Finding(LEDGER_CHAIN, self.ledger.later_self_signed,
                        "a ledger key registered itself instead of being endorsed",
                        "a registration signed by a registered ledger key",
                        "a self-signed registration"),
                self.line,
            )  # fmt: skip
        if not self.ledger_keys.active:
            raise _Failed(
                Finding(LEDGER_CHAIN, None, "no ledger key is registered", "a key registration",
                        f"{self.ledger.last_seq} entries of {LEDGER_CHAIN}"),
                self.line,
            )  # fmt: skip
        self.section = _KEYS

    def _publisher_key(self, line: PublisherKeyLine) -> None:
        if self.section == _LEDGER:
            self._close_ledger()
        if self.section != _KEYS:
            self._out_of_order(line)
        assert self.header is not None
        if self.header.from_seq == 1:
            self._fail(
                f"line {self.line}: publisher keys in an export from seq 1", None,
                "no key state before seq 1", f"key {line.key_id}",
            )  # fmt: skip
        try:
            public_key = from_b64url(line.public_key)
            key_id = key_id_for(public_key)
        except ValueError as e:
            self._fail(f"line {self.line} holds an invalid publisher key", None, "", str(e))
        if key_id != line.key_id or line.key_id in self.keys.registered:
            self._fail(
                f"line {self.line} holds an invalid publisher key", None,
                f"a new key id {key_id}", line.key_id,
            )  # fmt: skip
        self.keys.registered.add(key_id)
        self.keys.labels[key_id] = line.label
        self.keys.public_keys[key_id] = public_key
        if line.active:
            self.keys.active[key_id] = public_key

    def _prev(self, line: PrevLine) -> None:
        if self.section == _LEDGER:
            self._close_ledger()
        if self.section != _KEYS:
            self._out_of_order(line)
        assert self.header is not None
        first = self.header.from_seq
        prev_hash = bytes.fromhex(line.entry_hash)
        if line.seq != first - 1:
            self._fail("the prev line is not the entry before the range", line.seq,
                       f"seq {first - 1}", f"seq {line.seq}")  # fmt: skip
        if first == 1 and prev_hash != GENESIS_PREV_HASH:
            self._fail("the prev line of an export from seq 1 is not the genesis hash", 0,
                       GENESIS_PREV_HASH.hex(), line.entry_hash)  # fmt: skip
        self.auditor = ChainAuditor(self.chain, first - 1, prev_hash, self.keys)
        self.section = _CHECKPOINTS

    def _checkpoint(self, note: str, trusted: bool) -> None:
        assert self.header is not None
        assert self.auditor is not None
        h = self.header
        what = "trusted checkpoint" if trusted else "checkpoint"
        checkpoint = checkpoint_with_ledger_keys(note, self.ledger_keys)
        if isinstance(checkpoint, str):
            self._fail(f"{what} signature does not verify", _claimed_size(note),
                       f"a signature by a key registered in {LEDGER_CHAIN}", checkpoint)  # fmt: skip
        self.signatures += 1
        size = checkpoint.size
        # Any name a ledger key was registered under (a rotation may rename the ledger).
        origins = {origin_for(name, self.chain) for name in self.ledger_keys.labels.values()}
        if checkpoint.origin not in origins:
            origin = origin_for(h.ledger_name, self.chain)
            self._fail(f"{what} of another log", size, origin, checkpoint.origin)
        if size > h.chain_size:
            self._fail(
                f"a signed checkpoint covers {size} entries but the ledger says the chain has "
                f"{h.chain_size}", h.chain_size + 1,
                f"at most {h.chain_size} entries", f"a {what} at size {size}",
            )  # fmt: skip
        if not trusted:
            if size <= self.last_checkpoint:
                self._fail(f"line {self.line}: checkpoints out of order", size,
                           f"a size above {self.last_checkpoint}", str(size))  # fmt: skip
            self.last_checkpoint = size
        if size > h.to_seq:
            known = self.beyond.get(size)
            if known is not None and known != checkpoint.head_hash:
                self._fail(f"two signed checkpoints disagree about the head at size {size}",
                           size, known.hex(), checkpoint.head_hash.hex())  # fmt: skip
            self.beyond[size] = checkpoint.head_hash
        elif size >= h.from_seq - 1:
            pending = self.auditor.checkpoints.get(size)
            if pending is not None:
                if pending.head_hash != checkpoint.head_hash:
                    self._fail(f"two signed checkpoints disagree about the head at size {size}",
                               size, pending.head_hash.hex(), checkpoint.head_hash.hex())  # fmt: skip
            else:
                finding = self.auditor.expect_checkpoint(checkpoint)
                if finding is not None:
                    raise _Failed(finding, self.line)
            if not trusted:
                self.last_in_range = size
        elif not trusted:
            self._fail("checkpoint precedes the entries being checked", size,
                       f"size >= {h.from_seq - 1}", str(size))  # fmt: skip
        # A trusted checkpoint before the range cannot be compared with this export.
        self.checkpoints += 1

    def _close_checkpoints(self) -> None:
        assert self.header is not None
        for note in self.trusted:
            try:
                self._checkpoint(note, trusted=True)
            except _Failed as failed:
                raise _Failed(failed.finding, None) from None  # not a line of the file
        last = self.header.to_seq
        if self.last_in_range != last:
            found = (
                "none" if self.last_in_range is None else f"the last at size {self.last_in_range}"
            )
            self._fail("no signed checkpoint covers the last entry", last,
                       f"a checkpoint at size {last}", found)  # fmt: skip
        self.section = _ENTRIES

    def _end(self, end: EndLine) -> None:
        if self.section == _CHECKPOINTS:
            self._close_checkpoints()
        if self.section != _ENTRIES:
            self._out_of_order(end)
        assert self.header is not None
        assert self.auditor is not None
        self._flush()
        finding = self.auditor.finish()
        if finding is not None:
            raise _Failed(finding, self.line)
        h = self.header
        if self.auditor.last_seq != h.to_seq:
            self._fail("the export ends before the end of its range", self.auditor.last_seq + 1,
                       f"entries up to seq {h.to_seq}", f"last entry seq {self.auditor.last_seq}")  # fmt: skip
        if end.entries != self.entries:
            self._fail("the trailer's entry count disagrees with the file", None,
                       str(self.entries), str(end.entries))  # fmt: skip
        digest = self.hasher.digest()
        if end.digest != digest.hex():
            self._fail(
                "the trailer's digest does not match the file", None, digest.hex(), end.digest
            )
        public_key = self.ledger_keys.active.get(end.key_id)
        if public_key is None:
            self._fail("the trailer is not signed by a registered ledger key", None,
                       f"a key of {h.ledger_name} active in {LEDGER_CHAIN}",
                       f"{end.key_name} key {end.key_id}")  # fmt: skip
        label = self.ledger_keys.labels.get(end.key_id)
        if end.key_name != h.ledger_name or end.key_name != label:
            self._fail("the trailer's key_name is not the signing key's name", None,
                       f"{label!r}, the label of key {end.key_id}, equal to ledger_name {h.ledger_name!r}",
                       repr(end.key_name))  # fmt: skip
        try:
            signature = from_b64url(end.signature)
        except ValueError as e:
            self._fail("the trailer's signature is not base64url", None, "", str(e))
        if not verify_signature(public_key, signed_message(digest), signature):
            self._fail("the trailer's signature does not verify", None,
                       f"an Ed25519 signature by ledger key {end.key_id}", "one that does not verify")  # fmt: skip
        self.signatures += 1
        self.section = _DONE


def read_note(path: str | PathLike[str]) -> str:
    """A checkpoint note kept by the auditor, read from a file (`--checkpoint`).

    Raises `ConfigError` for a file that cannot be read, is larger than a note
    may be (`MAX_NOTE_BYTES`), or is not UTF-8: that is a bad argument, not a
    finding about the export."""
    try:
        with open(path, "rb") as stream:
            data = stream.read(MAX_NOTE_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"--checkpoint {path}: {e.strerror or e}") from e
    if len(data) > MAX_NOTE_BYTES:
        raise ConfigError(f"--checkpoint {path}: a note is at most {MAX_NOTE_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"--checkpoint {path}: not UTF-8 ({e.reason} at byte {e.start})") from e


def item_type(item: ExportLine) -> str:
    """The `type` of a line, as written in the file."""
    tag = type(item).__struct_config__.tag
    assert isinstance(tag, str)
    return tag


def _claimed_size(note: str) -> int | None:
    """The size an (unverified) note claims, to name where a bad one sits."""
    try:
        return parse_body(split_note(note)[0]).size
    except CheckpointError:
        return None


def _slug(name: str) -> bool:
    return _SLUG.match(name) is not None
