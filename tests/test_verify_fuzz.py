"""`trustledger verify` fed random corruptions of valid exports: always a refusal, never a crash.

Hypothesis changes a valid export a few times (byte flips, lines dropped,
duplicated or swapped, a cut, bytes inserted anywhere or next to a JSON token,
where whitespace would be legal) and checks that the service's
verifier refuses the result with a finding that names a line of the file, and
that the independent verifier of `tests/test_ledger_format.py` refuses it at the
same line and seq (docs/ledger-format.md §14.1: two verifiers that follow the
rule agree). A corruption that leaves the bytes as they were is no corruption
and is skipped. The exports are the vector files and a rotated-key build, a few
kilobytes each, so 2,000 examples take a few seconds.
"""

from __future__ import annotations

import io
from dataclasses import replace

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_ledger_format import VECTOR_DIR, verify_export_file
from test_verify_differential import BASE, LEDGER_NAME, ROTATED

from service.app.offline_verify import verify_export

VALID = [
    (VECTOR_DIR / "export-v1.jsonl").read_bytes(),
    (VECTOR_DIR / "export-v1-partial.jsonl").read_bytes(),
    replace(
        BASE, ledger_keys=ROTATED, checkpoint_signer=1, trailer_signer=1, ledger_name=LEDGER_NAME
    ).render(),
]
# Bytes that mean something to one rule or another: JSON structure and escapes,
# whitespace (CR is refused, space is not), a BOM, a lone surrogate, an invalid byte.
SPECIAL = [
    b"\n", b"\r", b" ", b"\t", b"\\", b'"', b"{", b"}", b",", b":", b"0", b"-",
    b"\xef\xbb\xbf", b"\\ud800", b"\xff", b"NaN", b"\xe2\x80\x94 ", b"+",
]  # fmt: skip


@st.composite
def corruptions(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """(the valid export, the same bytes changed 1 to 3 times)."""
    original = draw(st.sampled_from(VALID))
    data = original
    for _ in range(draw(st.integers(1, 3))):
        lines = data.split(b"\n")  # the last item is what follows the last LF
        kind = draw(
            st.sampled_from(["flip", "drop", "dup", "swap", "cut", "insert", "special", "between"])
        )
        if kind == "flip" and data:
            at = draw(st.integers(0, len(data) - 1))
            data = data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
        elif kind in ("drop", "dup", "swap") and len(lines) > 1:
            i = draw(st.integers(0, len(lines) - 2))
            j = draw(st.integers(0, len(lines) - 2))
            if kind == "drop":
                del lines[i]
            elif kind == "dup":
                lines.insert(j, lines[i])
            else:
                lines[i], lines[j] = lines[j], lines[i]
            data = b"\n".join(lines)
        elif kind == "between" and len(lines) > 1:
            # A special byte next to a JSON token of one line: where whitespace is legal.
            i = draw(st.integers(0, len(lines) - 2))
            tokens = [k for k, byte in enumerate(lines[i]) if byte in b",:{}[]"]
            if tokens:
                k = draw(st.sampled_from(tokens)) + draw(st.integers(0, 1))
                lines[i] = lines[i][:k] + draw(st.sampled_from(SPECIAL)) + lines[i][k:]
                data = b"\n".join(lines)
        elif kind == "cut":
            data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
        else:
            at = draw(st.integers(0, len(data)))
            extra = (
                draw(st.sampled_from(SPECIAL))
                if kind == "special"
                else draw(st.binary(min_size=1, max_size=8))
            )
            data = data[:at] + extra + data[at:]
    return original, data


def _lines_in(data: bytes) -> int:
    return data.count(b"\n") + (0 if data.endswith(b"\n") else 1)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corruptions())
def test_verify_refuses_naming_a_line_when_a_valid_export_is_corrupted(
    case: tuple[bytes, bytes],
) -> None:
    """Every changed export is refused by both verifiers at the same line and seq, with no crash."""
    original, data = case
    assume(data != original)
    report = verify_export(io.BytesIO(data))
    assert report.finding is not None, "a corrupted export verified"
    assert report.line is not None
    assert (1 if data else 0) <= report.line <= _lines_in(data)
    broken = verify_export_file(data)
    assert broken is not None
    assert (broken.seq, broken.line) == (report.finding.seq, report.line), (
        f"independent: {broken.reason}; service: {report.finding}"
    )


def test_verify_accepts_the_fuzzed_exports_when_untouched() -> None:
    """The starting points are valid: a refusal above is the corruption's doing."""
    for data in VALID:
        assert verify_export(io.BytesIO(data)).finding is None
        assert verify_export_file(data) is None
