"""Commitment patterns: `*` is any run of characters, matched without backtracking."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.domain.patterns import matches, matches_any


def _reference(pattern: str, value: str) -> bool:
    """What the contract says, as a regex: each `*` is `.*`, everything else literal."""
    regex = ".*".join(re.escape(part) for part in pattern.split("*"))
    return re.fullmatch(regex, value, re.DOTALL) is not None


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("payments.refund", "payments.refund", True),
        ("payments.refund", "payments.refunds", False),
        ("payments.*", "payments.refund", True),
        ("payments.*", "payments.", True),
        ("payments.*", "payments", False),
        ("order:*", "orders:42", False),
        ("*", "", True),
        ("*", "anything at all", True),
        ("**", "", True),
        ("a*a", "a", False),
        ("a*a", "aa", True),
        ("*.json", "x.json", True),
        ("*.json", "x.jso", False),
        ("a*b*c", "abc", True),
        ("a*b*c", "acb", False),
        ("a*b*c", "aXbYbZc", True),
        ("*ab*ab*", "abab", True),
        ("*ab*ab*", "aba", False),
        ("[a]", "a", False),
        ("[a]", "[a]", True),
        ("a?c", "abc", False),
        ("a.c", "abc", False),
        ("line*", "line\nbreak", True),
    ],
)
def test_matches_whole_value_when_pattern_has_literals_and_stars(
    pattern: str, value: str, expected: bool
) -> None:
    """`*` is any run (also none); every other character, `?` `[` `.` included, is literal."""
    assert matches(pattern, value) is expected
    assert _reference(pattern, value) is expected


@settings(max_examples=2000, deadline=None)
@given(
    pattern=st.text(alphabet="ab*.", max_size=10),
    value=st.text(alphabet="ab.", max_size=12),
)
def test_matches_agrees_with_regex_reference_when_inputs_are_small(
    pattern: str, value: str
) -> None:
    """On small random patterns and values, the matcher says what the regex reference says."""
    assert matches(pattern, value) is _reference(pattern, value)


@pytest.mark.parametrize(
    ("pattern", "value"),
    [
        pytest.param("arn:aws:s3:::*/*/*/*.json", "arn:aws:s3:::" + "/" * 1011, id="s3-slashes"),
        pytest.param("*a*a*a*a*a*b", "a" * 1024, id="stars-and-a"),
        pytest.param("*" + "a*" * 127 + "b", "a" * 1024, id="many-stars"),
        pytest.param("*" + "a" * 254 + "b", "a" * 1024, id="long-segment"),
    ],
)
def test_matches_is_fast_when_pattern_would_make_a_regex_backtrack(
    pattern: str, value: str
) -> None:
    """Worst-case inputs at the admission bounds (64 patterns of 256, 1024-character values)
    take well under a second; a backtracking regex takes seconds to hours on each."""
    started = time.perf_counter()
    assert not matches_any([pattern] * 64, value)
    assert time.perf_counter() - started < 0.5
