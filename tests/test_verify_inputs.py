"""Every input of `trustledger verify` has a bound and a planned refusal (docs/ledger-format.md §14.4).

The export file is read a line at a time, never more than one line's bound at
once; a kept checkpoint (`--checkpoint`) is read up to a note's bound; a pinned
key (`--ledger-key`) must be one of the two spellings of GET /v1/ledger/keys.
Outside these, the command exits 1 (a finding about the file) or 2 (a bad
argument) with a message, never a traceback.
"""

from __future__ import annotations

import base64
import io
import logging
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from test_ledger_format import CHECKPOINT_VECTOR, VECTOR_DIR
from test_verify_differential import BASE, MAX_LINE, MAX_NOTE, sized_note

from service.app.offline_verify import verify_export
from service.cli import main

EXPORT = VECTOR_DIR / "export-v1.jsonl"
HEAD = bytes.fromhex(CHECKPOINT_VECTOR["checkpoint"]["head_hash_hex"])
PUBLIC_KEY = bytes.fromhex(CHECKPOINT_VECTOR["ledger_key"]["public_key_hex"])


@pytest.fixture(autouse=True)
def _keep_logging() -> Iterator[None]:
    """`main` points the root logger at its stderr; give pytest's logging back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


class CountingStream(io.RawIOBase):
    """A stream of `size` bytes of `fill`, counting how many bytes were read from it."""

    def __init__(self, prefix: bytes, fill: bytes, size: int) -> None:
        self.data = prefix
        self.fill, self.size, self.read_bytes = fill, size, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self.size - self.read_bytes)
        chunk = (self.data[self.read_bytes :] + self.fill * n)[:n]
        buffer[:n] = chunk
        self.read_bytes += n
        return n


def test_verify_reads_at_most_one_line_bound_when_a_line_has_no_end() -> None:
    """A 64 MiB file without LF is refused at line 1 after reading about 4 MiB, not 64."""
    stream = CountingStream(b'{"type":"header","format":"', b"x", 64 * 1024 * 1024)
    report = verify_export(io.BufferedReader(stream, buffer_size=65536))
    assert report.finding is not None
    assert (report.finding.problem, report.line) == ("line 1 is too long", 1)
    assert stream.read_bytes <= MAX_LINE + 2 * 65536


@pytest.mark.parametrize(
    ("note", "accepted"),
    [
        pytest.param(sized_note(MAX_NOTE).checkpoint_note(HEAD).encode(), True, id="64-KiB-note"),
        pytest.param(sized_note(MAX_NOTE + 1).checkpoint_note(HEAD).encode(), False, id="larger"),
        pytest.param(CHECKPOINT_VECTOR["note"].encode().replace(b"acme", b"\xff"), False, id="not-utf8"),
        pytest.param(None, False, id="missing-file"),
    ],
)  # fmt: skip
def test_verify_refuses_as_bad_argument_when_a_kept_checkpoint_file_is_out_of_bounds(
    note: bytes | None, accepted: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A kept checkpoint is read up to 65,536 bytes of UTF-8; beyond, or unreadable: exit 2."""
    kept = tmp_path / "kept.note"
    if note is not None:
        kept.write_bytes(note)
    code = main(["verify", str(EXPORT), "--checkpoint", str(kept)])
    out, err = capsys.readouterr()
    if accepted:
        assert (code, out[:4]) == (0, "ok: "), out + err
    else:
        assert code == 2, out + err
        assert f"--checkpoint {kept}: " in err


@pytest.mark.parametrize(
    ("key", "code"),
    [
        (CHECKPOINT_VECTOR["ledger_key"]["verifier_key"], 0),
        (base64.urlsafe_b64encode(PUBLIC_KEY).rstrip(b"=").decode(), 0),
        ("trustledger.example+e7e569e0", 2),
        ("a+b", 2),
        ("+", 2),
        ("", 2),
        ("not base64url!", 2),
        (base64.urlsafe_b64encode(PUBLIC_KEY[:31]).rstrip(b"=").decode(), 2),
        (CHECKPOINT_VECTOR["ledger_key"]["verifier_key"] + "AA", 2),
    ],
)
def test_verify_refuses_as_bad_argument_when_the_pinned_ledger_key_is_malformed(
    key: str, code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--ledger-key` takes a verifier key or a base64url key of 32 bytes; anything else: exit 2."""
    assert main(["verify", str(EXPORT), "--ledger-key", key]) == code
    if code == 2:
        assert "--ledger-key" in capsys.readouterr().err


def test_verify_refuses_as_bad_argument_when_the_file_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file that cannot be opened is a bad argument (exit 2), not a finding."""
    assert main(["verify", str(tmp_path / "nothing.jsonl")]) == 2
    assert "nothing.jsonl" in capsys.readouterr().err


def test_verify_reads_standard_input_when_file_is_a_dash() -> None:
    """`trustledger verify -` checks the bytes on standard input, by the same rules."""
    command = Path(sys.executable).parent / "trustledger"
    good = subprocess.run(
        [str(command), "verify", "-"], input=EXPORT.read_bytes(), capture_output=True, timeout=60
    )
    assert (good.returncode, good.stdout[:4]) == (0, b"ok: "), good.stderr
    crlf = replace(BASE, eol=b"\r\n").render()
    bad = subprocess.run([str(command), "verify", "-"], input=crlf, capture_output=True, timeout=60)
    assert bad.returncode == 1, bad.stderr
    assert b"line 1 holds a CR byte" in bad.stdout
    assert b"(line 1 of -)" in bad.stdout
