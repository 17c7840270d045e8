"""Private key files: the org keys `trustledger keys create` writes, the ledger's own key.

A key file is JSON: `{"org": ..., "key_id": ..., "seed": <base64url>, "public_key": <base64url>}`,
readable only by its owner. Files are created exclusively and never overwritten.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from service.domain.signing import SigningKey, b64url, from_b64url
from service.errors import ConfigError


def save_key(key: SigningKey, path: Path) -> None:
    """Write a private key file readable only by its owner; never overwrite one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as e:
        raise ConfigError(f"{path} exists; refusing to overwrite a private key") from e
    with os.fdopen(fd, "w") as f:
        json.dump(
            {
                "org": key.org,
                "key_id": key.key_id,
                "seed": b64url(key.seed),
                "public_key": b64url(key.public_key),
            },
            f,
            indent=2,
        )
        f.write("\n")


def load_key(path: Path) -> SigningKey:
    """Read a key file; a clear error if it is missing or not one of ours."""
    try:
        raw = json.loads(path.read_text())
        key = SigningKey(org=raw["org"], seed=from_b64url(raw["seed"]))
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: no such key file") from e
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path}: not a trustledger key file ({e})") from e
    if raw.get("public_key") not in (None, b64url(key.public_key)):
        raise ConfigError(f"{path}: public_key does not belong to the seed")
    return key


def load_or_create_key(path: Path, org: str) -> tuple[SigningKey, bool]:
    """The key at `path`, created first if there is none; True when it was created."""
    if path.exists():
        return load_key(path), False
    key = SigningKey.generate(org)
    try:
        save_key(key, path)
    except ConfigError:
        # Another process created it between our check and our write: use theirs.
        return load_key(path), False
    return key, True
