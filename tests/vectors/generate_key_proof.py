"""Regenerate `tests/vectors/key-proof-v1.json`: a key registration's proof of possession.

    python tests/vectors/generate_key_proof.py            # rewrite key-proof-v1.json
    python tests/vectors/generate_key_proof.py --check    # exit 1 if the file is stale
    python tests/vectors/generate_key_proof.py --markdown # print the wire contract's example

The key is the one of `chain-v1.json` (seed = BLAKE3 of a fixed label); Ed25519
signatures are deterministic, so the file never changes unless the rule does. The
proof is made by `service.domain.key_proof`, the code `trustledger keys create`
runs; `tests/test_ledger_format.py` checks that the file equals `render()`, that
an implementation written from the documents reproduces it, and that
`schemas/examples/publisher_key.registered.json` is its event.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from datetime import UTC, datetime
from pathlib import Path

import blake3

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from service.domain.events import encode_event  # noqa: E402
from service.domain.key_proof import (  # noqa: E402
    KEY_PROOF_DOMAIN,
    key_proof_message,
    key_proof_problem,
    registration,
)
from service.domain.signing import SigningKey, b64url, from_b64url  # noqa: E402

OUT = Path(__file__).resolve().parent / "key-proof-v1.json"
SEED_LABEL = "trustledger/test-vectors/v1/ed25519-seed"
"""The seed label of chain-v1.json: the same key."""
ORG = "acme"
EVENT_ID = "01JQTZC570EK5T1W7PE3TT28R4"
OCCURRED_AT = datetime(2025, 4, 2, 10, 5, tzinfo=UTC)
LABEL = "acme ops key 2025-04"

# The same proof offered for something else: each must be refused.
REPLAYS = (
    ("another org", "globex", EVENT_ID),
    ("another event id", ORG, "01JQTZC570EK5T1W7PE3TT28R5"),
)


def vector_key() -> SigningKey:
    return SigningKey(org=ORG, seed=blake3.blake3(SEED_LABEL.encode()).digest())


def parts(org: str, key_id: str, event_id: str) -> list[tuple[str, bytes]]:
    """The proof message cut into its parts, for the wire contract's table."""
    fields = [("org", org.encode()), ("key_id", key_id.encode()), ("id", event_id.encode())]
    out = [("domain prefix `trustledger/key-proof/v1` 0x00", KEY_PROOF_DOMAIN)]
    for name, data in fields:
        out += [(f"u32be(len({name}))", struct.pack(">I", len(data))), (name, data)]
    assert b"".join(d for _, d in out) == key_proof_message(org, key_id, event_id)
    return out


def build() -> dict[str, object]:
    key = vector_key()
    event = registration(key, EVENT_ID, OCCURRED_AT, LABEL)
    assert isinstance(event.proof, str)
    proof = from_b64url(event.proof)
    message = key_proof_message(ORG, key.key_id, EVENT_ID)
    assert key_proof_problem(ORG, key.key_id, EVENT_ID, key.public_key, event.proof) is None
    replays = []
    for what, org, event_id in REPLAYS:
        problem = key_proof_problem(org, key.key_id, event_id, key.public_key, event.proof)
        assert problem is not None
        replays.append(
            {
                "what": what,
                "org": org,
                "event_id": event_id,
                "message_hex": key_proof_message(org, key.key_id, event_id).hex(),
                "valid": False,
            }
        )
    return {
        "description": (
            "trustledger key proof v1: the proof of possession a publisher_key.registered"
            " carries. Spec: docs/wire-contract.md section 3.3, docs/ledger-format.md"
            " section 5.4. Regenerate with tests/vectors/generate_key_proof.py."
        ),
        "format": "trustledger/key-proof/v1",
        "domain_hex": KEY_PROOF_DOMAIN.hex(),
        "key": {
            "seed_label": SEED_LABEL,
            "seed_hex": key.seed.hex(),
            "public_key_hex": key.public_key.hex(),
            "public_key_b64url": b64url(key.public_key),
            "key_id": key.key_id,
        },
        "org": ORG,
        "event_id": EVENT_ID,
        "message_hex": message.hex(),
        "proof_hex": proof.hex(),
        "proof_b64url": event.proof,
        "event": encode_event(event).decode("utf-8"),
        "replays": replays,
    }


def render() -> bytes:
    """The exact bytes of key-proof-v1.json."""
    return (json.dumps(build(), indent=2) + "\n").encode("utf-8")


def example() -> bytes:
    """`schemas/examples/publisher_key.registered.json`: the vector's event, indented."""
    event = json.loads(str(build()["event"]))
    order = ("kind", "id", "org", "occurred_at", "key_id", "public_key", "label", "proof")
    return (json.dumps({k: event[k] for k in order}, indent=2) + "\n").encode("utf-8")


def markdown() -> str:
    """The worked example of docs/wire-contract.md §3.3."""
    doc = build()
    key = doc["key"]
    assert isinstance(key, dict)
    out = [
        f"Key: the test vector key of [ledger-format.md §15.1](ledger-format.md)"
        f" (seed = BLAKE3(`{key['seed_label']}`)), public key"
        f" `{key['public_key_b64url']}`, key id `{key['key_id']}`."
        f" Org `{doc['org']}`, event id `{doc['event_id']}`.",
        "",
        "| part | bytes | hex |",
        "|---|---:|---|",
    ]
    for label, data in parts(str(doc["org"]), str(key["key_id"]), str(doc["event_id"])):
        out.append(f"| {label} | {len(data)} | `{data.hex()}` |")
    message = str(doc["message_hex"])
    proof = str(doc["proof_hex"])
    out += ["", "Message (hex):", "", "```", *_wrap(message), "```", ""]
    out += ["Proof, Ed25519 by the new key over the message (hex):", ""]
    out += ["```", *_wrap(proof), "```", ""]
    out += [f"As `proof` (base64url): `{doc['proof_b64url']}`", ""]
    out += ["The registration (these bytes, signed by a key `acme` already has):", ""]
    out += ["```json", str(doc["event"]), "```", ""]
    out.append(
        "The same proof under org `globex`, or under event id `01JQTZC570EK5T1W7PE3TT28R5`,"
        " does not verify (`key_proof_invalid`)."
    )
    return "\n".join(out) + "\n"


def _wrap(hex_text: str, width: int = 64) -> list[str]:
    return [hex_text[i : i + width] for i in range(0, len(hex_text), width)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    parser.add_argument("--markdown", action="store_true", help="print the wire contract example")
    args = parser.parse_args(argv)
    if args.markdown:
        sys.stdout.write(markdown())
        return 0
    content = render()
    if args.check:
        if not OUT.exists() or OUT.read_bytes() != content:
            print(
                f"{OUT} is stale; run python tests/vectors/generate_key_proof.py", file=sys.stderr
            )
            return 1
        return 0
    OUT.write_bytes(content)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
