"""Commitment patterns for actions and resources.

A pattern matches a whole string. `*` matches any run of characters (also
none); every other character matches itself. There is no escaping and no
character class: a pattern is readable by a relying party at a glance.
`payments.refund` matches only itself; `payments.*` matches `payments.refund`
and `payments.` ; `*` matches everything.
"""

from __future__ import annotations

import re
from functools import lru_cache


@lru_cache(maxsize=4096)
def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


def matches(pattern: str, value: str) -> bool:
    """True when `pattern` matches the whole of `value`."""
    return _compile(pattern).fullmatch(value) is not None


def matches_any(patterns: list[str], value: str) -> bool:
    """True when at least one of `patterns` matches `value`."""
    return any(matches(p, value) for p in patterns)
