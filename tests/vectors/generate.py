"""Regenerate `tests/vectors/chain-v1.json` with the service's own chaining code.

    python tests/vectors/generate.py            # rewrite chain-v1.json
    python tests/vectors/generate.py --check    # exit 1 if the file is stale
    python tests/vectors/generate.py --markdown # print the worked example for the spec

Everything is deterministic: the Ed25519 seed is BLAKE3 of a fixed label, Ed25519
signatures are deterministic, and every time is fixed. The entries are built by
`service.app.ingest.chain_entry`, the function ingest uses, so the vectors are what
the service really stores. `tests/test_ledger_format.py` checks that the file
equals `render()` and that an independent implementation reproduces it.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import blake3

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from service.adapters.postgres import ChainHead  # noqa: E402
from service.app.ingest import chain_entry  # noqa: E402
from service.domain.admission import Admitted, Incoming  # noqa: E402
from service.domain.chain import (  # noqa: E402
    ENTRY_DOMAIN,
    GENESIS_PREV_HASH,
    EntryFields,
    entry_hash,
    entry_preimage,
    to_micros,
)
from service.domain.events import (  # noqa: E402
    ActionPerformed,
    AgentRegistered,
    Event,
    Money,
    PublisherKeyRegistered,
    encode_event,
)
from service.domain.signing import (  # noqa: E402
    KEY_ID_DOMAIN,
    SigningKey,
    b64url,
    key_id_for,
    verify_signature,
)

OUT = Path(__file__).resolve().parent / "chain-v1.json"
SECTION = 15
"""The section of docs/ledger-format.md that holds the test vectors."""
SEED_LABEL = "trustledger/test-vectors/v1/ed25519-seed"
CHAIN = "acme"

# (received_at, event-builder). Entries 2 and 3 share a received_at: the ledger
# reads its clock once per ingest batch, so equal times are normal.
RECEIVED = (
    datetime(2026, 1, 15, 9, 30, 0, 123456, tzinfo=UTC),
    datetime(2026, 1, 15, 9, 31, 2, 500000, tzinfo=UTC),
    datetime(2026, 1, 15, 9, 31, 2, 500000, tzinfo=UTC),
)

# Extra encodings of received_at, including instants before 1970.
TIME_EXAMPLES = (
    datetime(1970, 1, 1, tzinfo=UTC),
    datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(1900, 1, 1, tzinfo=UTC),
    datetime(2026, 1, 15, 9, 30, 0, 123456, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
)


def vector_key() -> SigningKey:
    """The fixed vector key: seed = BLAKE3(label), 32 bytes."""
    return SigningKey(org=CHAIN, seed=blake3.blake3(SEED_LABEL.encode()).digest())


def vector_events(key: SigningKey) -> list[Event]:
    """The three events: the org's self-signed first key, an agent, an action."""
    return [
        PublisherKeyRegistered(
            id=f"key-{key.key_id}",
            org=CHAIN,
            occurred_at=datetime(2026, 1, 15, 9, 30, tzinfo=UTC),
            key_id=key.key_id,
            public_key=b64url(key.public_key),
            label="test vector key",
        ),
        AgentRegistered(
            id="evt-0002",
            org=CHAIN,
            occurred_at=datetime(2026, 1, 15, 9, 31, tzinfo=UTC),
            agent="zoe-bot",
            display_name="Zoë",  # non-ASCII: the hash covers the raw UTF-8 bytes
            principal="ops@acme.example",
        ),
        ActionPerformed(
            id="evt-0003",
            org=CHAIN,
            occurred_at=datetime(2026, 1, 15, 9, 31, 1, tzinfo=UTC),
            agent="zoe-bot",
            action="invoice.pay",
            resource="invoice/42",
            amount=Money(amount_minor=1250, currency="EUR"),
        ),
    ]


def segments(prev_hash: bytes, fields: EntryFields) -> list[tuple[str, bytes]]:
    """The preimage cut into its parts, for the spec's worked example."""
    chain = fields.chain.encode("utf-8")
    key_id = fields.key_id.encode("ascii")
    parts = [
        ("domain prefix", ENTRY_DOMAIN),
        ("prev_hash", prev_hash),
        ("length of chain, u32be", struct.pack(">I", len(chain))),
        ("chain, UTF-8", chain),
        ("seq, u64be", struct.pack(">Q", fields.seq)),
        ("received_at_us, i64be", struct.pack(">q", fields.received_at_us)),
        ("length of key_id, u32be", struct.pack(">I", len(key_id))),
        ("key_id, ASCII", key_id),
        ("length of signature, u32be", struct.pack(">I", len(fields.signature))),
        ("signature", fields.signature),
        ("length of event, u32be", struct.pack(">I", len(fields.event_bytes))),
        ("event", fields.event_bytes),
    ]
    assert b"".join(data for _, data in parts) == entry_preimage(prev_hash, fields)
    return parts


def build() -> dict[str, object]:
    """The vector document as a JSON-ready dict."""
    key = vector_key()
    head = ChainHead(CHAIN, 0, GENESIS_PREV_HASH)
    entries: list[dict[str, object]] = []
    for seq, (event, received_at) in enumerate(
        zip(vector_events(key), RECEIVED, strict=True), start=1
    ):
        data = encode_event(event)
        signature = key.sign(data)
        assert verify_signature(key.public_key, data, signature)
        message = Incoming(
            subject=f"tl.ev.{CHAIN}._",
            data=data,
            key_id=key.key_id,
            signature=b64url(signature),
            stream_seq=seq,
        )
        prev = head.hash
        row = chain_entry(head, Admitted(message, event, key.key_id, signature), received_at)
        fields = EntryFields(
            chain=row.chain,
            seq=row.seq,
            received_at_us=to_micros(row.received_at),
            key_id=row.key_id,
            signature=row.signature,
            event_bytes=row.event_bytes,
        )
        assert row.seq == seq
        assert row.prev_hash == prev
        assert row.entry_hash == entry_hash(prev, fields)
        entries.append(
            {
                "chain": row.chain,
                "seq": row.seq,
                "received_at": row.received_at.isoformat().replace("+00:00", "Z"),
                "received_at_us": fields.received_at_us,
                "key_id": row.key_id,
                "signature_hex": row.signature.hex(),
                "signature_valid": True,
                "event": row.event_bytes.decode("utf-8"),
                "event_hex": row.event_bytes.hex(),
                "prev_hash_hex": row.prev_hash.hex(),
                "preimage_hex": entry_preimage(prev, fields).hex(),
                "entry_hash_hex": row.entry_hash.hex(),
            }
        )
    return {
        "description": (
            "trustledger ledger entry hash chain, format v1: a 3-entry chain. "
            "Spec: docs/ledger-format.md. Regenerate with tests/vectors/generate.py."
        ),
        "format": "trustledger/entry/v1",
        "hash": "BLAKE3, 32-byte output",
        "entry_domain_hex": ENTRY_DOMAIN.hex(),
        "genesis_prev_hash_hex": GENESIS_PREV_HASH.hex(),
        "key": {
            "seed_label": SEED_LABEL,
            "seed_hex": key.seed.hex(),
            "public_key_hex": key.public_key.hex(),
            "public_key_b64url": b64url(key.public_key),
            "key_id_domain_hex": KEY_ID_DOMAIN.hex(),
            "key_id_preimage_hex": (KEY_ID_DOMAIN + key.public_key).hex(),
            "key_id_blake3_hex": blake3.blake3(KEY_ID_DOMAIN + key.public_key).hexdigest(),
            "key_id": key_id_for(key.public_key),
        },
        "signatures_verify": True,
        "entries": entries,
        "head": {"seq": len(entries), "hash_hex": head.hash.hex()},
        "received_at_examples": [
            {
                "received_at": t.isoformat().replace("+00:00", "Z"),
                "received_at_us": to_micros(t),
                "i64be_hex": struct.pack(">q", to_micros(t)).hex(),
            }
            for t in TIME_EXAMPLES
        ],
    }


def render() -> bytes:
    """The exact bytes of chain-v1.json."""
    return (json.dumps(build(), indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _wrap(hex_text: str, width: int = 64) -> list[str]:
    return [hex_text[i : i + width] for i in range(0, len(hex_text), width)] or [""]


def markdown() -> str:
    """The worked example section of docs/ledger-format.md."""
    doc = build()
    key = doc["key"]
    assert isinstance(key, dict)
    out: list[str] = ["| received_at | received_at_us | i64be (hex) |", "|---|---:|---|"]
    times = doc["received_at_examples"]
    assert isinstance(times, list)
    for t in times:
        out.append(f"| `{t['received_at']}` | {t['received_at_us']} | `{t['i64be_hex']}` |")
    out += ["", f"### {SECTION}.1 The key", ""]
    out.append(f"Seed label (UTF-8): `{key['seed_label']}`  ")
    out.append("Seed = BLAKE3(label), 32 bytes:")
    out += ["", "```", key["seed_hex"], "```", ""]
    out.append("Ed25519 public key (32 bytes, hex):")
    out += ["", "```", key["public_key_hex"], "```", ""]
    out.append(f"Public key, base64url without padding: `{key['public_key_b64url']}`")
    out += ["", "Key id preimage, `trustledger/key-id/v1` 0x00 || public key (hex):", ""]
    out += ["```", *_wrap(key["key_id_preimage_hex"]), "```", ""]
    out.append(f"BLAKE3 of it: `{key['key_id_blake3_hex']}`  ")
    out.append(f"Key id (first 8 bytes, hex): `{key['key_id']}`")
    entries = doc["entries"]
    assert isinstance(entries, list)
    for entry in entries:
        segs = segments(bytes.fromhex(entry["prev_hash_hex"]), _fields_of(entry))
        out += ["", f"### {SECTION}.{entry['seq'] + 1} Entry {entry['seq']}", ""]
        out.append(
            f"chain `{entry['chain']}`, seq {entry['seq']}, received_at "
            f"`{entry['received_at']}` = {entry['received_at_us']} µs, key id `{entry['key_id']}`."
        )
        out += ["", "Event bytes (UTF-8, exactly as published and signed):", ""]
        out += ["```json", entry["event"], "```", ""]
        out.append("Signature (Ed25519 over the event bytes, 64 bytes, hex):")
        out += ["", "```", *_wrap(entry["signature_hex"]), "```", ""]
        out.append("Preimage, part by part (hex):")
        out += ["", "| part | bytes | hex |", "|---|---:|---|"]
        for label, data in segs:
            shown = data.hex()
            if len(shown) > 80:
                shown = shown[:40] + "…" + shown[-24:]
            out.append(f"| {label} | {len(data)} | `{shown}` |")
        out += ["", "Full preimage (hex, wrapped at 32 bytes a line):", ""]
        out += ["```", *_wrap(entry["preimage_hex"]), "```", ""]
        out.append(f"entry_hash = BLAKE3(preimage) = `{entry['entry_hash_hex']}`")
    doc_head = doc["head"]
    assert isinstance(doc_head, dict)
    out += [
        "",
        f"Chain head after 3 entries: seq {doc_head['seq']}, hash `{doc_head['hash_hex']}`.",
    ]
    return "\n".join(out) + "\n"


def _fields_of(entry: dict[str, Any]) -> EntryFields:
    return EntryFields(
        chain=entry["chain"],
        seq=entry["seq"],
        received_at_us=entry["received_at_us"],
        key_id=entry["key_id"],
        signature=bytes.fromhex(entry["signature_hex"]),
        event_bytes=entry["event"].encode("utf-8"),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if chain-v1.json is stale")
    parser.add_argument("--markdown", action="store_true", help="print the spec's worked example")
    args = parser.parse_args(argv)
    if args.markdown:
        sys.stdout.write(markdown())
        return 0
    content = render()
    if args.check:
        if not OUT.exists() or OUT.read_bytes() != content:
            print(f"{OUT} is stale; run python tests/vectors/generate.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_bytes(content)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
