"""`trustledger verify` and the independent verifier judge every edge-case export alike.

Each case below is an export file that is valid but for one thing: an event
whose bytes hold `NaN` is still properly signed and chained, a checkpoint
whose time has three fractional digits is still signed by the ledger key, a
file with CR LF line ends still carries a digest over exactly those bytes and
a valid trailer signature. The builder here makes such files with the public
seeds of the test vectors (`tests/vectors/`), `blake3` and `nacl` only, and
reproduces `export-v1.jsonl` byte for byte when nothing is changed.

For every case, the service's verifier (`verify_export`, and `trustledger
verify` as a command) and the verifier written from the document
(`tests/test_ledger_format.py`) must both refuse, at the same line and seq,
or both accept; each case names the rule of docs/ledger-format.md it tests.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import blake3
import nacl.signing
import pytest
from test_ledger_format import (
    CHECKPOINT_VECTOR,
    ENTRIES,
    EXPORT_SIGNATURE_PREFIX,
    GENESIS,
    SPEC_PATH,
    VECTOR_DIR,
    VECTORS,
    hash_entry,
    key_id_of,
    note_key_id,
    verify_export_file,
)

REPO = Path(__file__).resolve().parents[1]
MAX_LINE = 4 * 1024 * 1024
MAX_NOTE = 65_536
LEDGER_NAME = CHECKPOINT_VECTOR["ledger_key"]["name"]
LEDGER_SEED_LABEL = CHECKPOINT_VECTOR["ledger_key"]["seed_label"]
LEDGER_RECEIVED_US = 1768467600000000
TIME = "2026-01-15T09:32:00.000000Z"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _ledger_key(seed_label: str) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(blake3.blake3(seed_label.encode()).digest())


PUBLISHER = nacl.signing.SigningKey(bytes.fromhex(VECTORS["key"]["seed_hex"]))


def _line(doc: dict[str, Any]) -> bytes:
    """One line as the writer spells it: compact JSON, raw UTF-8."""
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


@dataclass(frozen=True)
class Build:
    """An export of the vector chain `acme`, with one thing changed and everything re-signed."""

    ledger_name: str = LEDGER_NAME
    # (seed label, label) of each ledger key: the first registers itself, the others
    # are registered by the first (a rotation).
    ledger_keys: tuple[tuple[str, str], ...] = ((LEDGER_SEED_LABEL, LEDGER_NAME),)
    events: tuple[str, ...] = tuple(e["event"] for e in ENTRIES)
    received_us: tuple[int, ...] = tuple(e["received_at_us"] for e in ENTRIES)
    chain_size: int | None = None
    exported_at: str = "2026-01-15T09:32:00Z"
    checkpoint_time: str = TIME
    extensions: tuple[str, ...] = ()  # extra checkpoint body lines, after `time`
    witness_lines: tuple[str, ...] = ()  # extra signature lines, after the ledger's
    checkpoint_signer: int = 0
    trailer_signer: int = 0
    trailer_key_name: str | None = None  # default: the trailer signer's label
    eol: bytes = b"\n"
    lines_hook: Callable[[list[bytes]], list[bytes]] | None = None  # before the digest
    end_hook: Callable[[bytes], bytes] | None = None
    file_hook: Callable[[bytes], bytes] | None = None

    def checkpoint_note(self, head: bytes) -> str:
        key = _ledger_key(self.ledger_keys[self.checkpoint_signer][0])
        name = self.ledger_keys[self.checkpoint_signer][1]
        size = len(self.events)
        body = (
            f"{name}/acme\n{size}\n{base64.b64encode(head).decode()}\ntime {self.checkpoint_time}\n"
        )
        body += "".join(f"{line}\n" for line in self.extensions)
        blob = note_key_id(name, bytes(key.verify_key)) + key.sign(body.encode()).signature
        ours = f"\u2014 {name} {base64.b64encode(blob).decode()}\n"
        return f"{body}\n{ours}" + "".join(f"{line}\n" for line in self.witness_lines)

    def render(self) -> bytes:
        size = len(self.events)
        lines = [
            _line({
                "type": "header", "format": "trustledger-export/v1", "chain": "acme",
                "from_seq": 1, "to_seq": size,
                "chain_size": size if self.chain_size is None else self.chain_size,
                "ledger_name": self.ledger_name, "exported_at": self.exported_at,
            })
        ]  # fmt: skip
        root = _ledger_key(self.ledger_keys[0][0])
        head = GENESIS
        for seq, (seed_label, label) in enumerate(self.ledger_keys, start=1):
            public_key = bytes(_ledger_key(seed_label).verify_key)
            key_id = key_id_of(public_key)
            event = _line({
                "kind": "publisher_key.registered", "key_id": key_id,
                "public_key": _b64url(public_key), "label": label,
                "id": f"ledger-key-{key_id}", "org": "_ledger",
                "occurred_at": "2026-01-15T09:00:00Z",
            })  # fmt: skip
            signature = root.sign(event).signature
            signer_id = key_id_of(bytes(root.verify_key))
            head = self._entry(lines, "_ledger", seq, LEDGER_RECEIVED_US, signer_id, signature, event, head)  # fmt: skip
        lines.append(_line({"type": "prev", "seq": 0, "entry_hash": GENESIS.hex()}))
        checkpoint_at = len(lines)
        head = GENESIS
        publisher_id = key_id_of(bytes(PUBLISHER.verify_key))
        for seq, (text, received) in enumerate(
            zip(self.events, self.received_us, strict=True), start=1
        ):
            event = text.encode("utf-8", errors="surrogatepass")
            signature = PUBLISHER.sign(event).signature
            head = self._entry(lines, "acme", seq, received, publisher_id, signature, event, head)
        lines.insert(checkpoint_at, _line({"type": "checkpoint", "note": self.checkpoint_note(head)}))  # fmt: skip
        if self.lines_hook is not None:
            lines = self.lines_hook(lines)
        data = b"".join(line + self.eol for line in lines)
        digest = blake3.blake3(data).digest()
        signer_seed, signer_label = self.ledger_keys[self.trailer_signer]
        signer = _ledger_key(signer_seed)
        end = _line({
            "type": "end", "entries": size, "digest": digest.hex(),
            "key_name": signer_label if self.trailer_key_name is None else self.trailer_key_name,
            "key_id": key_id_of(bytes(signer.verify_key)),
            "signature": _b64url(signer.sign(EXPORT_SIGNATURE_PREFIX + digest).signature),
        })  # fmt: skip
        if self.end_hook is not None:
            end = self.end_hook(end)
        data += end + self.eol
        return self.file_hook(data) if self.file_hook is not None else data

    @staticmethod
    def _entry(
        lines: list[bytes], chain: str, seq: int, received_us: int, key_id: str,
        signature: bytes, event: bytes, prev: bytes,
    ) -> bytes:  # fmt: skip
        entry_hash = hash_entry(prev, chain, seq, received_us, key_id, signature, event)
        lines.append(
            _line({
                "type": "entry", "chain": chain, "seq": seq, "received_at_us": received_us,
                "key_id": key_id, "signature": signature.hex(),
                "event": event.decode("utf-8", errors="surrogatepass"),
                "prev_hash": prev.hex(), "entry_hash": entry_hash.hex(),
            })
        )  # fmt: skip
        return entry_hash


BASE = Build()


def event3(old: str, new: str) -> Build:
    """Entry 3's event with `old` replaced by `new` (signed and chained as it is)."""
    text = ENTRIES[2]["event"]
    assert old in text
    return replace(BASE, events=(*BASE.events[:2], text.replace(old, new, 1)))


def at_line(index: int, old: bytes, new: bytes) -> Build:
    """Line `index` (0-based) with bytes `old` replaced, before the digest is computed."""

    def hook(lines: list[bytes]) -> list[bytes]:
        assert old in lines[index]
        return [*lines[:index], lines[index].replace(old, new, 1), *lines[index + 1 :]]

    return replace(BASE, lines_hook=hook)


def nested(depth: int) -> Build:
    """Entry 3's event with a member holding arrays so that the whole nests `depth` deep."""
    return event3(
        '"correlation_id":null', f'"correlation_id":{"[" * (depth - 1)}{"]" * (depth - 1)}'
    )


def padded_line(length: int) -> Build:
    """Entry 3's line made exactly `length` bytes long, its LF included, by a longer event."""
    short = event3('"correlation_id":null', '"correlation_id":""')
    base = len(short.render().split(b"\n")[6]) + 1
    return event3('"correlation_id":null', f'"correlation_id":"{"x" * (length - base)}"')


def sized_note(size: int) -> Build:
    """The checkpoint note made exactly `size` bytes of UTF-8, by one long extension line."""
    base = len(replace(BASE, extensions=("x",)).checkpoint_note(GENESIS).encode())
    return replace(BASE, extensions=("x" * (size - base + 1),))


def witness(name: str) -> str:
    """A well-formed signature line of a key the verifier does not know (ignored)."""
    return f"\u2014 {name} {base64.b64encode(bytes(range(68))).decode()}"


def non_canonical_signature_blob(lines: list[bytes]) -> list[bytes]:
    """The ledger's signature line with unused bits set: other spelling, same bytes."""
    doc = json.loads(lines[3])
    prefix, blob = doc["note"].rstrip("\n").rsplit(" ", 1)
    assert blob.endswith("=")
    assert not blob.endswith("==")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = alphabet[alphabet.index(blob[-2]) | 1]
    assert last != blob[-2]
    assert base64.b64decode(blob[:-2] + last + "=") == base64.b64decode(blob)
    doc["note"] = f"{prefix} {blob[:-2]}{last}=\n"
    return [*lines[:3], _line(doc), *lines[4:]]


ROTATED = ((LEDGER_SEED_LABEL, "old.example"), ("test/second-ledger-key", LEDGER_NAME))
ARABIC_DIGITS = "".join(chr(0x0660 + int(d)) if d.isdigit() else d for d in "2026")


@dataclass(frozen=True)
class Case:
    id: str
    rule: str  # the document's rule, as docs/ledger-format.md names it
    build: Build
    refused_at: tuple[int | None, int] | None  # (seq, line) both must name; None: both accept


# fmt: off
CASES = [
    Case("untouched", "14.1", BASE, None),
    # --- event bytes, §4.1 (entry 3 is line 7) -----------------------------------
    Case("event-nan", "E2", event3('"correlation_id":null', '"correlation_id":NaN'), (3, 7)),
    Case("event-infinity", "E2", event3('"correlation_id":null', '"correlation_id":Infinity'), (3, 7)),
    Case("event-minus-infinity", "E2", event3('"correlation_id":null', '"correlation_id":-Infinity'), (3, 7)),
    Case("event-not-an-object", "E2", replace(BASE, events=(*BASE.events[:2], "[1]")), (3, 7)),
    Case("event-trailing-value", "E2", replace(BASE, events=(*BASE.events[:2], ENTRIES[2]["event"] + "{}")), (3, 7)),
    Case("event-bom", "E1", replace(BASE, events=(*BASE.events[:2], "\ufeff" + ENTRIES[2]["event"])), (3, 7)),
    Case("event-crlf-whitespace-allowed", "E2", event3('"correlation_id":null,', '"correlation_id":null,\r\n\t '), None),
    Case("event-depth-16-allowed", "E3", nested(16), None),
    Case("event-depth-17", "E3", nested(17), (3, 7)),
    Case("event-repeated-member", "E4", event3('"kind":"action.performed",', '"kind":"action.performed","kind":"action.performed",'), (3, 7)),
    Case("event-repeated-member-last-wins", "E4", event3('"org":"acme"', '"org":"beta","org":"acme"'), (3, 7)),
    Case("event-repeated-nested-member", "E4", event3('"amount_minor":1250', '"amount_minor":1,"amount_minor":1250'), (3, 7)),
    Case("event-repeated-member-escaped", "E4", event3('"resource":"invoice/42"', '"resource":"invoice/42","\\u0072esource":"x"'), (3, 7)),
    Case("event-lone-high-surrogate", "E5", event3('"correlation_id":null', '"correlation_id":"\\ud800"'), (3, 7)),
    Case("event-lone-low-surrogate", "E5", event3('"correlation_id":null', '"correlation_id":"\\udc00x"'), (3, 7)),
    Case("event-high-surrogate-then-other", "E5", event3('"correlation_id":null', '"correlation_id":"\\ud800\\u0041"'), (3, 7)),
    Case("event-lone-surrogate-member-name", "E5", event3('"correlation_id":null', '"\\ud800":1,"correlation_id":null'), (3, 7)),
    Case("event-surrogate-pair-allowed", "E5", event3('"correlation_id":null', '"correlation_id":"\\ud83d\\ude00"'), None),
    Case("event-number-overflows-double", "E6", event3('"amount_minor":1250', '"amount_minor":1e400'), (3, 7)),
    Case("event-negative-overflow", "E6", event3('"amount_minor":1250', '"amount_minor":-1e400'), (3, 7)),
    Case("event-underflow-allowed", "E6", event3('"amount_minor":1250', '"amount_minor":1e-400'), None),
    Case("event-fraction-allowed", "E6", event3('"amount_minor":1250', '"amount_minor":12.5'), None),
    Case("event-integer-4300-digits-allowed", "E6", event3('"amount_minor":1250', f'"amount_minor":-{"9" * 4300}'), None),
    Case("event-integer-4301-digits", "E6", event3('"amount_minor":1250', f'"amount_minor":{"9" * 4301}'), (3, 7)),
    # --- the lines of the file, §13.1 and §14.1 L1-L5 ----------------------------
    Case("crlf-line-ends", "L4", replace(BASE, eol=b"\r\n"), (None, 1)),
    Case("cr-as-json-whitespace", "L4", at_line(0, b',"format"', b',\r"format"'), (None, 1)),
    Case("space-and-tab-whitespace-allowed", "L5", at_line(0, b',"format":', b', "format"\t: '), None),
    Case("bom", "L5", at_line(0, b"{", b"\xef\xbb\xbf{"), (None, 1)),
    Case("not-utf8", "L5", at_line(5, b"\xc3\xab", b"\xeb"), (2, 6)),
    Case("empty-line", "L5", replace(BASE, lines_hook=lambda lines: [*lines[:4], b"", *lines[4:]]), (1, 5)),
    Case("repeated-member-header", "L5", at_line(0, b'"chain":"acme",', b'"chain":"acme","chain":"acme",'), (None, 1)),
    Case("repeated-member-entry-last-wins", "L5", at_line(6, b'"seq":3,', b'"seq":99,"seq":3,'), (3, 7)),
    Case("repeated-member-end", "L5", replace(BASE, end_hook=lambda end: end.replace(b'"entries":3,', b'"entries":3,"entries":3,')), (None, 8)),
    Case("lone-surrogate-in-line", "L5", at_line(5, b'zoe-bot', b'zoe-bot\\udc00'), (2, 6)),
    Case("seq-2-pow-63", "L5", at_line(6, b'"seq":3,', b'"seq":9223372036854775808,'), (3, 7)),
    Case("seq-as-fraction", "L5", at_line(6, b'"seq":3,', b'"seq":3.0,'), (3, 7)),
    Case("seq-with-exponent", "L5", at_line(6, b'"seq":3,', b'"seq":3e0,'), (3, 7)),
    Case("chain-size-2-pow-63-minus-1-allowed", "L5", replace(BASE, chain_size=2**63 - 1), None),
    Case("chain-size-2-pow-63", "L5", replace(BASE, chain_size=2**63), (None, 1)),
    Case("received-at-min-allowed", "L5", replace(BASE, received_us=(-(2**63), 0, 2**63 - 1)), None),
    Case("received-at-below-min", "L5", at_line(4, b'"received_at_us":1768469400123456', b'"received_at_us":-9223372036854775809'), (1, 5)),
    Case("exported-at-microseconds-allowed", "L5", replace(BASE, exported_at="2026-01-15T09:32:00.000001Z"), None),
    Case("exported-at-three-digits", "L5", replace(BASE, exported_at="2026-01-15T09:32:00.123Z"), (None, 1)),
    Case("exported-at-offset", "L5", replace(BASE, exported_at="2026-01-15T09:32:00+00:00"), (None, 1)),
    Case("exported-at-lower-case", "L5", replace(BASE, exported_at="2026-01-15t09:32:00z"), (None, 1)),
    Case("exported-at-no-such-day", "L5", replace(BASE, exported_at="2026-02-29T09:32:00Z"), (None, 1)),
    Case("exported-at-other-digits", "L5", replace(BASE, exported_at=f"{ARABIC_DIGITS}-01-15T09:32:00Z"), (None, 1)),
    Case("end-line-with-space", "L5", replace(BASE, end_hook=lambda end: end.replace(b'"entries":', b'"entries": ')), (None, 8)),
    Case("end-line-reordered", "L5", replace(BASE, end_hook=lambda end: _line({"type": "end", **dict(reversed(list(json.loads(end).items())[1:]))})), (None, 8)),
    Case("end-line-escaped", "L5", replace(BASE, end_hook=lambda end: end.replace(b'"key_name":"t', b'"key_name":"\\u0074')), (None, 8)),
    Case("line-of-4-mib-allowed", "L2", padded_line(MAX_LINE), None),
    Case("line-over-4-mib", "L2", padded_line(MAX_LINE + 1), (3, 7)),
    Case("trailing-bytes", "L1", replace(BASE, file_hook=lambda data: data + b"x"), (None, 9)),
    Case("trailing-empty-line", "L1", replace(BASE, file_hook=lambda data: data + b"\n"), (None, 9)),
    Case("cut-off", "L3", replace(BASE, file_hook=lambda data: data[:-1]), (None, 8)),
    # --- names: §12.1, §12.4 step 2, §14.1 steps 1 and 9c --------------------------
    Case("ledger-name-with-plus", "14.1/1", replace(BASE, ledger_name="trust+ledger.example", ledger_keys=((LEDGER_SEED_LABEL, "trust+ledger.example"),)), (None, 1)),
    Case("ledger-name-with-space", "14.1/1", replace(BASE, ledger_name="trust ledger"), (None, 1)),
    Case("ledger-name-200-allowed", "14.1/1", replace(BASE, ledger_name="l" * 200, ledger_keys=((LEDGER_SEED_LABEL, "l" * 200),)), None),
    Case("ledger-name-201", "14.1/1", replace(BASE, ledger_name="l" * 201, ledger_keys=((LEDGER_SEED_LABEL, "l" * 201),)), (None, 1)),
    Case("witness-line-allowed", "12.4/2", replace(BASE, witness_lines=(witness("witness.example/w1"),)), None),
    Case("witness-name-with-plus", "12.4/2", replace(BASE, witness_lines=(witness("witness+1.example"),)), (None, 4)),
    Case("witness-name-with-nbsp", "12.4/2", replace(BASE, witness_lines=(witness("witness\xa0one"),)), (None, 4)),
    Case("witness-name-with-ideographic-space", "12.4/2", replace(BASE, witness_lines=(witness("witness\u3000one"),)), (None, 4)),
    Case("witness-line-split-at-u2028", "12.4/2", replace(BASE, witness_lines=(witness("w1") + "\u2028" + witness("w2"),)), (None, 4)),
    Case("signature-lines-100-allowed", "12.4/2", replace(BASE, witness_lines=tuple(witness(f"w{i}") for i in range(99))), None),
    Case("signature-lines-101", "12.4/2", replace(BASE, witness_lines=tuple(witness(f"w{i}") for i in range(100))), (None, 4)),
    Case("signature-not-canonical-base64", "12.4/2", replace(BASE, lines_hook=non_canonical_signature_blob), (None, 4)),
    Case("note-of-64-kib-allowed", "12.4/1", sized_note(MAX_NOTE), None),
    Case("note-over-64-kib", "12.4/1", sized_note(MAX_NOTE + 1), (None, 4)),
    Case("trailer-key-name-not-signer-name", "9c", replace(BASE, ledger_keys=ROTATED, checkpoint_signer=1, trailer_signer=0, trailer_key_name=LEDGER_NAME), (None, 9)),
    Case("trailer-by-rotated-key-allowed", "9c", replace(BASE, ledger_keys=ROTATED, checkpoint_signer=1, trailer_signer=1), None),
    Case("trailer-key-name-not-ledger-name", "9c", replace(BASE, ledger_keys=ROTATED, checkpoint_signer=1, trailer_signer=0), (None, 9)),
    # --- the checkpoint text, §12.4 step 4 ------------------------------------------
    Case("time-no-fraction", "12.4/4", replace(BASE, checkpoint_time="2026-01-15T09:32:00Z"), (None, 4)),
    Case("time-three-digits", "12.4/4", replace(BASE, checkpoint_time="2026-01-15T09:32:00.000Z"), (None, 4)),
    Case("time-nine-digits", "12.4/4", replace(BASE, checkpoint_time="2026-01-15T09:32:00.000000000Z"), (None, 4)),
    Case("time-offset", "12.4/4", replace(BASE, checkpoint_time="2026-01-15T09:32:00.000000+00:00"), (None, 4)),
    Case("time-hour-24", "12.4/4", replace(BASE, checkpoint_time="2026-01-15T24:00:00.000000Z"), (None, 4)),
    Case("time-leap-second", "12.4/4", replace(BASE, checkpoint_time="2026-12-31T23:59:60.000000Z"), (None, 4)),
    Case("time-other-digits", "12.4/4", replace(BASE, checkpoint_time=f"{ARABIC_DIGITS}-01-15T09:32:00.000000Z"), (None, 4)),
    Case("time-twice", "12.4/4", replace(BASE, extensions=(f"time {TIME}",)), (None, 4)),
    Case("extension-line-allowed", "12.4/4", replace(BASE, extensions=("witnessed-by somebody",)), None),
    Case("empty-extension-line", "12.4/4", replace(BASE, extensions=("", "x")), (None, 4)),
]
# fmt: on

RULE_TEXT = {
    "E1": "* **E1.**", "E2": "* **E2.**", "E3": "* **E3.**", "E4": "* **E4.**",
    "E5": "* **E5.**", "E6": "* **E6.**", "L1": "* **L1.**", "L2": "* **L2.**",
    "L3": "* **L3.**", "L4": "* **L4.**", "L5": "* **L5.**",
    "12.4/1": "1. The note is at most **65,536 bytes**",
    "12.4/2": "is **1 to 100** signature lines",
    "12.4/4": "4. The text parses: at least three lines, each ended by LF, **none empty**",
    "14.1/1": "`ledger_name` is a ledger name",
    "9c": "* **9c.**",
    "14.1": "Checks L1\u2013L5 and steps 1\u201310 are the whole rule",
}  # fmt: skip


def _service(data: bytes) -> tuple[int | None, int | None] | None:
    from service.app.offline_verify import verify_export

    report = verify_export(io.BytesIO(data))
    if report.finding is None:
        return None
    return report.finding.seq, report.line


def _independent(data: bytes) -> tuple[int | None, int | None] | None:
    broken = verify_export_file(data)
    return None if broken is None else (broken.seq, broken.line)


def test_builder_reproduces_the_export_vector_when_nothing_is_changed() -> None:
    """The unchanged build is `export-v1.jsonl` byte for byte, so each case changes one thing."""
    assert BASE.render() == (VECTOR_DIR / "export-v1.jsonl").read_bytes()


def test_every_case_names_a_rule_the_document_states_when_listed() -> None:
    """Each case's rule is written in docs/ledger-format.md, in the words the table maps it to."""
    spec = SPEC_PATH.read_text(encoding="utf-8")
    assert {case.rule for case in CASES} <= set(RULE_TEXT)
    for rule, text in RULE_TEXT.items():
        assert text in spec, f"docs/ledger-format.md does not state rule {rule}: {text!r}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_both_verifiers_agree_when_export_has_an_edge_case(case: Case) -> None:
    """The service and the independent verifier both refuse at the same seq and line, or both accept."""
    data = case.build.render()
    assert _independent(data) == case.refused_at, f"independent verifier, rule {case.rule}"
    assert _service(data) == case.refused_at, f"trustledger verify, rule {case.rule}"


@pytest.fixture
def keep_logging() -> Iterator[None]:
    """`main` points the root logger at its stderr; give pytest's logging back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("keep_logging")
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_cli_exits_with_the_verdict_when_export_has_an_edge_case(
    case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`trustledger verify FILE` exits 0 on a file both accept, else 1 naming the line."""
    from service.cli import main

    path = tmp_path / f"{case.id}.jsonl"
    path.write_bytes(case.build.render())
    code = main(["verify", str(path)])
    out = capsys.readouterr().out
    if case.refused_at is None:
        assert (code, out[:4]) == (0, "ok: "), out
    else:
        seq, line = case.refused_at
        assert code == 1, out
        assert out.startswith("FAILED at "), out
        assert seq is None or out.startswith(f"FAILED at acme#{seq}: "), out
        assert f"(line {line} of {path})" in out


@pytest.mark.parametrize(
    ("case_id", "first_line"),
    [
        ("event-nan", "FAILED at acme#3: event bytes are not a valid event object"),
        ("crlf-line-ends", "FAILED at export: line 1 holds a CR byte"),
        ("untouched", "ok: 3 entries, 1 checkpoint, 6 signatures verified"),
    ],
)
def test_installed_command_gives_the_verdict_when_run_as_a_process(
    case_id: str, first_line: str, tmp_path: Path
) -> None:
    """The installed `trustledger verify` (a child process) says the same as the function."""
    case = next(c for c in CASES if c.id == case_id)
    path = tmp_path / "export.jsonl"
    path.write_bytes(case.build.render())
    command = Path(sys.executable).parent / "trustledger"
    done = subprocess.run(
        [str(command), "verify", str(path)], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert done.returncode == (0 if case.refused_at is None else 1), done.stderr
    assert done.stdout.startswith(first_line), done.stdout
