"""Regenerate the checkpoint and export vectors with the service's own code.

    python tests/vectors/generate_export.py            # rewrite the files below
    python tests/vectors/generate_export.py --check    # exit 1 if any file is stale
    python tests/vectors/generate_export.py --markdown # print the spec's worked example

Writes, next to this script:

* `checkpoint-v1.json`: the ledger key, a checkpoint of the chain of
  `chain-v1.json` at size 3, its note body, note key id, signature and the full
  signed note (`service.domain.checkpoint.sign_checkpoint`);
* `export-v1.jsonl`: a whole-chain export of that chain (the ledger's key chain
  `_ledger`, the genesis link, one checkpoint, 3 entries, the trailer), written by
  `service.app.export.export_chain` itself;
* `export-v1-partial.jsonl`: the range 2..2 of the same chain, exported after a
  checkpoint at size 3 was signed: a `publisher_key` line, a non-genesis `prev`,
  a checkpoint at the range's end and one beyond it;
* `export-v1.json`: what each export file holds and the values a verifier
  computes from it (digest, signed message), for cross-checking.

`export_chain` runs against `MemoryStore`, an in-memory stand-in for the
PostgreSQL store that answers the few queries an export makes. Everything is
deterministic: seeds are BLAKE3 of fixed labels, Ed25519 signatures are
deterministic, every time is fixed. `tests/test_ledger_format.py` checks that
the files equal `outputs()` and that both verifiers accept them.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import importlib.util
import json
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import blake3

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from service.adapters.postgres import ChainHead, EntryRow, LedgerStore, StoredCheckpoint  # noqa: E402
from service.app.checkpoints import checkpoint_at_size  # noqa: E402
from service.app.export import export_chain  # noqa: E402
from service.app.ingest import chain_entry  # noqa: E402
from service.app.ledger_key import LedgerSigner  # noqa: E402
from service.domain.admission import Admitted, Incoming  # noqa: E402
from service.domain.audit import LEDGER_CHAIN  # noqa: E402
from service.domain.chain import GENESIS_PREV_HASH  # noqa: E402
from service.domain.checkpoint import (  # noqa: E402
    ED25519_TYPE,
    Checkpoint,
    format_time,
    note_key_id,
    origin_for,
    sign_checkpoint,
    verifier_key,
    verify_checkpoint,
)
from service.domain.events import PublisherKeyRegistered, encode_event  # noqa: E402
from service.domain.export_format import SIGNATURE_DOMAIN, signed_message  # noqa: E402
from service.domain.signing import SigningKey, b64url  # noqa: E402


def _load_chain_vectors() -> ModuleType:
    """`generate.py` (the chain-v1 vectors), loaded by path: its entries are the export's."""
    spec = importlib.util.spec_from_file_location("trustledger_chain_vectors", HERE / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


chain_vectors = _load_chain_vectors()

CHECKPOINT_OUT = HERE / "checkpoint-v1.json"
EXPORT_OUT = HERE / "export-v1.jsonl"
PARTIAL_OUT = HERE / "export-v1-partial.jsonl"
EXPORT_META_OUT = HERE / "export-v1.json"

LEDGER_SEED_LABEL = "trustledger/test-vectors/v1/ledger-seed"
LEDGER_NAME = "trustledger.example"
CHAIN = chain_vectors.CHAIN
LEDGER_REGISTERED_AT = datetime(2026, 1, 15, 9, 0, 0, tzinfo=UTC)
"""When the ledger key registered itself in `_ledger` (its event's and entry's time)."""
SIGNED_AT = datetime(2026, 1, 15, 9, 32, 0, tzinfo=UTC)
"""The fixed clock: every checkpoint's time and every export's `exported_at`."""
PARTIAL_RANGE = (2, 2)
SECTION = chain_vectors.SECTION


def ledger_key() -> SigningKey:
    """The fixed ledger key: seed = BLAKE3(label), 32 bytes."""
    return SigningKey(org=LEDGER_CHAIN, seed=blake3.blake3(LEDGER_SEED_LABEL.encode()).digest())


def ledger_signer() -> LedgerSigner:
    return LedgerSigner(LEDGER_NAME, ledger_key())


def _clock() -> datetime:
    return SIGNED_AT


# ---- the ledger's entries ---------------------------------------------------------------------


def ledger_entries() -> list[EntryRow]:
    """`_ledger` entry 1: the ledger key's self-signed registration, as `ensure_registered` makes it."""
    signer = ledger_signer()
    key = signer.key
    event = PublisherKeyRegistered(
        id=f"ledger-key-{key.key_id}",
        org=LEDGER_CHAIN,
        occurred_at=LEDGER_REGISTERED_AT,
        key_id=key.key_id,
        public_key=b64url(key.public_key),
        label=signer.name,
    )
    data = encode_event(event)
    signature = key.sign(data)
    message = Incoming(LEDGER_CHAIN, data, key.key_id, b64url(signature), 0)
    head = ChainHead(LEDGER_CHAIN, 0, GENESIS_PREV_HASH)
    return [
        chain_entry(head, Admitted(message, event, key.key_id, signature), LEDGER_REGISTERED_AT)
    ]


def org_entries() -> list[EntryRow]:
    """The 3 entries of `chain-v1.json`, chained by ingest's `chain_entry`."""
    key = chain_vectors.vector_key()
    head = ChainHead(CHAIN, 0, GENESIS_PREV_HASH)
    rows = []
    for seq, (event, received_at) in enumerate(
        zip(chain_vectors.vector_events(key), chain_vectors.RECEIVED, strict=True), start=1
    ):
        data = encode_event(event)
        signature = key.sign(data)
        message = Incoming(f"tl.ev.{CHAIN}._", data, key.key_id, b64url(signature), seq)
        rows.append(chain_entry(head, Admitted(message, event, key.key_id, signature), received_at))
    return rows


# ---- an in-memory store for export_chain ------------------------------------------------------


class MemoryStore:
    """The queries `export_chain` and `checkpoint_at_size` make, answered from lists."""

    def __init__(self, entries: dict[str, list[EntryRow]]) -> None:
        self.entries = entries
        self.saved: dict[tuple[str, int], StoredCheckpoint] = {}

    async def chain_head(self, chain: str) -> ChainHead | None:
        rows = self.entries.get(chain)
        if rows is None:
            return None
        return ChainHead(chain, rows[-1].seq, rows[-1].entry_hash)

    async def iter_entries(
        self, chain: str | None = None, from_seq: int = 1, chunk: int = 1000
    ) -> AsyncIterator[EntryRow]:
        assert chain is not None
        for row in self.entries.get(chain, []):
            if row.seq >= from_seq:
                yield row

    async def seq_bounds(self, *args: object) -> tuple[int, int] | None:
        raise NotImplementedError("the vectors export by seq range only")

    def _sorted(self, chain: str) -> list[StoredCheckpoint]:
        return sorted((c for (ch, _), c in self.saved.items() if ch == chain), key=lambda c: c.size)

    async def latest_checkpoint(
        self, chain: str, at_most: int | None = None
    ) -> StoredCheckpoint | None:
        found = [c for c in self._sorted(chain) if at_most is None or c.size <= at_most]
        return found[-1] if found else None

    async def checkpoint_at(self, chain: str, size: int) -> StoredCheckpoint | None:
        return self.saved.get((chain, size))

    async def checkpoints(
        self, chain: str, min_size: int = 0, max_size: int | None = None, limit: int | None = None
    ) -> list[StoredCheckpoint]:
        found = [
            c
            for c in self._sorted(chain)
            if c.size >= min_size and (max_size is None or c.size <= max_size)
        ]
        return found if limit is None else found[:limit]

    async def save_checkpoint(self, checkpoint: StoredCheckpoint) -> StoredCheckpoint:
        return self.saved.setdefault((checkpoint.chain, checkpoint.size), checkpoint)


def memory_store() -> MemoryStore:
    return MemoryStore({LEDGER_CHAIN: ledger_entries(), CHAIN: org_entries()})


async def _export(store: MemoryStore, from_seq: int = 1, to_seq: int | None = None) -> bytes:
    lines = export_chain(
        cast(LedgerStore, store), ledger_signer(), CHAIN, from_seq, to_seq, clock=_clock
    )
    return b"".join([line async for line in lines])


async def _exports() -> tuple[bytes, bytes]:
    # The whole chain: export_chain signs the head at size 3 itself.
    whole = await _export(memory_store())
    # The range 2..2 of a ledger that had signed size 3 before: export_chain signs
    # size 2 for it and carries the checkpoint at 3 as one beyond the range.
    store = memory_store()
    await checkpoint_at_size(cast(LedgerStore, store), ledger_signer(), CHAIN, 3, _clock)
    partial = await _export(store, *PARTIAL_RANGE)
    return whole, partial


# ---- the documents ----------------------------------------------------------------------------


def checkpoint_document() -> dict[str, object]:
    """The ledger key and one signed checkpoint, every intermediate value spelled out."""
    signer = ledger_signer()
    key = signer.key
    head = org_entries()[-1]
    checkpoint = Checkpoint(origin_for(LEDGER_NAME, CHAIN), head.seq, head.entry_hash, SIGNED_AT)
    body = checkpoint.body.encode("utf-8")
    note_key_preimage = LEDGER_NAME.encode() + b"\n" + ED25519_TYPE + key.public_key
    key_id = note_key_id(LEDGER_NAME, key.public_key)
    assert hashlib.sha256(note_key_preimage).digest()[:4] == key_id
    signature = key.sign(body)
    note = sign_checkpoint(checkpoint, LEDGER_NAME, key)
    assert verify_checkpoint(note, LEDGER_NAME, key.public_key) == checkpoint
    blob = key_id + signature
    return {
        "description": (
            "trustledger signed checkpoint, format v1: a C2SP signed note over the head of "
            "the chain of chain-v1.json. Spec: docs/ledger-format.md. Regenerate with "
            "tests/vectors/generate_export.py."
        ),
        "ledger_key": {
            "seed_label": LEDGER_SEED_LABEL,
            "seed_hex": key.seed.hex(),
            "public_key_hex": key.public_key.hex(),
            "public_key_b64url": b64url(key.public_key),
            "key_id": key.key_id,
            "name": LEDGER_NAME,
            "note_key_id_preimage_hex": note_key_preimage.hex(),
            "note_key_id_sha256_hex": hashlib.sha256(note_key_preimage).hexdigest(),
            "note_key_id_hex": key_id.hex(),
            "verifier_key": verifier_key(LEDGER_NAME, key.public_key),
        },
        "checkpoint": {
            "ledger_name": LEDGER_NAME,
            "chain": CHAIN,
            "origin": checkpoint.origin,
            "size": checkpoint.size,
            "head_hash_hex": checkpoint.head_hash.hex(),
            "head_hash_base64": base64.b64encode(checkpoint.head_hash).decode(),
            "time": format_time(SIGNED_AT),
        },
        "body": body.decode("utf-8"),
        "body_hex": body.hex(),
        "signature_hex": signature.hex(),
        "signature_line_blob_hex": blob.hex(),
        "signature_line_blob_base64": base64.b64encode(blob).decode(),
        "signature_line": note[len(checkpoint.body) + 1 : -1],
        "note": note,
        "note_hex": note.encode("utf-8").hex(),
    }


def _file_facts(name: str, data: bytes) -> dict[str, object]:
    lines = data.split(b"\n")
    assert lines[-1] == b""
    lines = lines[:-1]
    header, end = json.loads(lines[0]), json.loads(lines[-1])
    digest = blake3.blake3(data[: len(data) - len(lines[-1]) - 1]).digest()
    assert end["digest"] == digest.hex()
    return {
        "file": name,
        "valid": True,
        "lines": len(lines),
        "types": [json.loads(line)["type"] for line in lines],
        "chain": header["chain"],
        "from_seq": header["from_seq"],
        "to_seq": header["to_seq"],
        "chain_size": header["chain_size"],
        "ledger_name": header["ledger_name"],
        "checkpoint_sizes": [
            int(json.loads(line)["note"].split("\n")[1])
            for line in lines
            if json.loads(line)["type"] == "checkpoint"
        ],
        "digest_hex": digest.hex(),
        "signed_message_hex": signed_message(digest).hex(),
        "trailer_signature_b64url": end["signature"],
        "sha256_of_file_hex": hashlib.sha256(data).hexdigest(),
    }


def export_document(whole: bytes, partial: bytes) -> dict[str, object]:
    key = ledger_key()
    return {
        "description": (
            "trustledger-export/v1 files made by service.app.export.export_chain from the "
            "chain of chain-v1.json and the ledger key of checkpoint-v1.json. Spec: "
            "docs/ledger-format.md. Regenerate with tests/vectors/generate_export.py."
        ),
        "format": "trustledger-export/v1",
        "signature_domain_hex": SIGNATURE_DOMAIN.hex(),
        "ledger_public_key_hex": key.public_key.hex(),
        "ledger_key_id": key.key_id,
        "files": [
            _file_facts(EXPORT_OUT.name, whole),
            _file_facts(PARTIAL_OUT.name, partial),
        ],
    }


def _json(doc: dict[str, object]) -> bytes:
    return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def outputs() -> dict[Path, bytes]:
    """Every file this script writes, and its exact bytes."""
    whole, partial = asyncio.run(_exports())
    return {
        CHECKPOINT_OUT: _json(checkpoint_document()),
        EXPORT_OUT: whole,
        PARTIAL_OUT: partial,
        EXPORT_META_OUT: _json(export_document(whole, partial)),
    }


# ---- the worked example for docs/ledger-format.md ---------------------------------------------


def _wrap(hex_text: str, width: int = 64) -> list[str]:
    return [hex_text[i : i + width] for i in range(0, len(hex_text), width)] or [""]


def markdown(files: dict[Path, bytes] | None = None) -> str:
    """The checkpoint and export worked example of docs/ledger-format.md."""
    files = outputs() if files is None else files
    doc: dict[str, Any] = json.loads(files[CHECKPOINT_OUT])
    meta: dict[str, Any] = json.loads(files[EXPORT_META_OUT])
    k, c = doc["ledger_key"], doc["checkpoint"]
    out = [f"### {SECTION}.5 The ledger key", ""]
    out.append(f"Seed label (UTF-8): `{k['seed_label']}`  ")
    out.append("Seed = BLAKE3(label), 32 bytes:")
    out += ["", "```", k["seed_hex"], "```", ""]
    out.append("Ed25519 public key (32 bytes, hex):")
    out += ["", "```", k["public_key_hex"], "```", ""]
    out.append(f"Public key, base64url without padding: `{k['public_key_b64url']}`  ")
    out.append(f"Key id in `_ledger` (§5.1): `{k['key_id']}`  ")
    out.append(f"Note key name (its registration's `label`): `{k['name']}`")
    out += ["", "Note key id preimage, name || 0x0A || 0x01 || public key (hex):", ""]
    out += ["```", *_wrap(k["note_key_id_preimage_hex"]), "```", ""]
    out.append(f"SHA-256 of it: `{k['note_key_id_sha256_hex']}`  ")
    out.append(f"Note key id (first 4 bytes, hex): `{k['note_key_id_hex']}`  ")
    out.append(f"Verifier key (note tooling): `{k['verifier_key']}`")
    out += ["", f"### {SECTION}.6 A checkpoint", ""]
    out.append(
        f"Ledger `{c['ledger_name']}`, chain `{c['chain']}` (the chain of §{SECTION}.2 to §{SECTION}.4), size {c['size']}, "
        f"head hash `{c['head_hash_hex']}`, time `{c['time']}`."
    )
    out += ["", "Body (the signed bytes; every line ends with 0x0A):", ""]
    out += ["```", *doc["body"].rstrip("\n").split("\n"), "```", ""]
    out.append("Body as hex:")
    out += ["", "```", *_wrap(doc["body_hex"]), "```", ""]
    out.append("Ed25519 signature over the body (hex):")
    out += ["", "```", *_wrap(doc["signature_hex"]), "```", ""]
    out.append("Signature line blob, note key id || signature (hex):")
    out += ["", "```", *_wrap(doc["signature_line_blob_hex"]), "```", ""]
    out.append("The signed note (body, an empty line, the signature line; ends with 0x0A):")
    out += ["", "```", *doc["note"].rstrip("\n").split("\n"), "```", ""]
    out += [f"### {SECTION}.7 An export of the whole chain", ""]
    whole = meta["files"][0]
    out.append(
        f"`tests/vectors/{whole['file']}`, {whole['lines']} lines "
        f"({', '.join(whole['types'])}), byte for byte:"
    )
    out += ["", "```", *files[EXPORT_OUT].decode("utf-8").rstrip("\n").split("\n"), "```", ""]
    out.append(f"BLAKE3 of lines 1 to {whole['lines'] - 1} (every byte before the `end` line):")
    out += ["", "```", whole["digest_hex"], "```", ""]
    out.append("Signed by the trailer, `trustledger/export/v1` 0x00 || digest (hex):")
    out += ["", "```", *_wrap(whole["signed_message_hex"]), "```", ""]
    out += [f"### {SECTION}.8 An export of a range", ""]
    part = meta["files"][1]
    out.append(
        f"`tests/vectors/{part['file']}` exports seqs {part['from_seq']}..{part['to_seq']} "
        f"of the same chain (size {part['chain_size']}) after a checkpoint at size 3 was "
        f"signed: lines {', '.join(part['types'])}; checkpoints at sizes "
        f"{', '.join(str(s) for s in part['checkpoint_sizes'])} (the range's end, and one "
        f"beyond it). Its digest is `{part['digest_hex']}`."
    )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a vector file is stale")
    parser.add_argument("--markdown", action="store_true", help="print the spec's worked example")
    args = parser.parse_args(argv)
    files = outputs()
    if args.markdown:
        sys.stdout.write(markdown(files))
        return 0
    stale = [path for path, data in files.items() if not path.exists() or path.read_bytes() != data]
    if args.check:
        for path in stale:
            print(f"{path} is stale; run python tests/vectors/generate_export.py", file=sys.stderr)
        return 1 if stale else 0
    for path, data in files.items():
        path.write_bytes(data)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
