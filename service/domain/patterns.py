"""Commitment patterns for actions and resources.

A pattern matches a whole string. `*` matches any run of characters (also
none); every other character matches itself. There is no escaping and no
character class: a pattern is readable by a relying party at a glance.
`payments.refund` matches only itself; `payments.*` matches `payments.refund`
and `payments.` ; `*` matches everything.

Matching never backtracks. The pattern splits at `*` into literal segments:
the first must start the value, the last must end it, and each one between is
found, in order, at its leftmost place after the previous one (`str.find`).
Leftmost is always right: a later place leaves less room for what follows,
never more. So a match costs one `find` per segment, each scanning the value
at most once: O(len(value) * len(pattern)) at worst, about linear in practice,
where a regex (`fnmatch`) backtracks exponentially on `*a*a*a*a*b`.
"""

from __future__ import annotations

from collections.abc import Iterable


def matches(pattern: str, value: str) -> bool:
    """True when `pattern` matches the whole of `value`."""
    segments = pattern.split("*")
    if len(segments) == 1:
        return value == pattern
    first, *middle, last = segments
    if len(first) + len(last) > len(value):
        return False
    if not (value.startswith(first) and value.endswith(last)):
        return False
    position, end = len(first), len(value) - len(last)
    for segment in middle:
        found = value.find(segment, position, end)
        if found < 0:
            return False
        position = found + len(segment)
    return True


def matches_any(patterns: Iterable[str], value: str) -> bool:
    """True when at least one of `patterns` matches `value`."""
    return any(matches(p, value) for p in patterns)
