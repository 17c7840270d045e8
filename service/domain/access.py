"""Who may do what on the HTTP API: API keys, roles, and the visibility matrix.

Pure rules, no I/O: the API's one guard (`service.api.access`) authenticates a
caller to a `Principal`, looks up the `Rule` of the route in `MATRIX` and asks
`decide`. docs/api.md shows the same matrix as a table; a test checks that
every route of the app has exactly one rule and that each cell answers as the
table says.

API keys are `tlk_<key_id>_<secret>`: `key_id` is 12 lowercase hex digits
(48 random bits, the visible prefix that names the key in lists and logs),
`secret` 32 random bytes in base64url without padding (43 characters). Only
`hash_api_key(token)` is stored: BLAKE3 of the whole key behind a
domain-separation prefix. A 256-bit random secret needs no slow password hash:
nothing can be guessed from the hash, and equality is checked in constant time.
"""

from __future__ import annotations

import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, get_args

import blake3

from service.domain.signing import b64url

Role = Literal["relying_party", "publisher_admin", "auditor", "operator"]
ROLES: tuple[Role, ...] = get_args(Role)

KEY_SCHEME = "tlk"
KEY_ID_HEX_CHARS = 12
SECRET_BYTES = 32
_KEY_FORMAT = re.compile(r"tlk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
MAX_TOKEN_CHARS = 64
"""A bearer token longer than any key is refused before it is parsed."""
_HASH_DOMAIN = b"trustledger/api-key/v1\x00"


@dataclass(frozen=True, slots=True)
class NewApiKey:
    key_id: str
    token: str
    """The whole key, shown once to whoever created it and never stored."""
    secret_hash: bytes


def new_api_key() -> NewApiKey:
    """A fresh random key: its id, the token to hand out, and the hash to store."""
    key_id = secrets.token_hex(KEY_ID_HEX_CHARS // 2)
    token = f"{KEY_SCHEME}_{key_id}_{b64url(secrets.token_bytes(SECRET_BYTES))}"
    return NewApiKey(key_id, token, hash_api_key(token))


def hash_api_key(token: str) -> bytes:
    """What is stored of a key: BLAKE3 (32 bytes) of the domain prefix and the key."""
    return blake3.blake3(_HASH_DOMAIN + token.encode("ascii")).digest()


def parse_api_key(token: str) -> str | None:
    """The key id of a well-formed key, or None: nothing else is looked up."""
    if len(token) > MAX_TOKEN_CHARS:
        return None
    match = _KEY_FORMAT.fullmatch(token)  # not match(): `$` would let a trailing "\n" in
    return match[1] if match else None


def key_matches(token: str, secret_hash: bytes) -> bool:
    """Whether `token` is the key whose hash is stored, compared in constant time."""
    return hmac.compare_digest(hash_api_key(token), secret_hash)


@dataclass(frozen=True, slots=True)
class Org:
    org: str
    display_name: str
    created_at: datetime


KeyState = Literal["active", "revoked", "expired"]


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """What is stored of an API key: never the key itself."""

    key_id: str
    org: str | None
    role: Role
    label: str
    secret_hash: bytes
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None

    def state(self, now: datetime) -> KeyState:
        if self.revoked_at is not None:
            return "revoked"
        return "active" if now < self.expires_at else "expired"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: the key it presented, the org it acts for, its role."""

    key_id: str
    org: str | None
    """None for operators: they run the service and belong to no org."""
    role: Role

    @property
    def is_operator(self) -> bool:
        return self.role == "operator"


Scope = Literal["any", "path_org", "own_org"]
"""Which orgs' data a rule allows:

* `any`: whatever the route serves (posture of any agent, public checkpoints);
* `path_org`: only when the route's `{org}` is the caller's org;
* `own_org`: the route serves a listing that the handler filters to the
  caller's org (`Principal.org`).

Operators are never restricted by scope."""


@dataclass(frozen=True, slots=True)
class Rule:
    roles: frozenset[Role] | None
    """Who may call the route; None: anyone, without a key."""
    scope: Scope = "any"


PUBLIC = Rule(None)
ANY_KEY = Rule(frozenset(ROLES))
OPERATOR = Rule(frozenset({"operator"}))


def _rule(*roles: Role, scope: Scope) -> Rule:
    return Rule(frozenset({*roles, "operator"}), scope)


MATRIX: dict[tuple[str, str], Rule] = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,  # the checks' detail only for operators (the handler)
    ("GET", "/metrics"): OPERATOR,
    ("GET", "/v1/ledger/keys"): PUBLIC,
    ("GET", "/v1/chains/{org}/checkpoint"): PUBLIC,
    ("GET", "/v1/chains/{org}/checkpoints"): PUBLIC,
    ("GET", "/v1/chains/{org}/checkpoints/{size}"): PUBLIC,
    ("POST", "/v1/chains/{org}/checkpoints"): OPERATOR,
    ("GET", "/v1/agents/{org}/{agent}/posture"): ANY_KEY,
    ("GET", "/v1/agents/{org}/{agent}/commitments"): ANY_KEY,
    ("GET", "/v1/agents/{org}/{agent}/timeline"): ANY_KEY,
    ("GET", "/v1/postures"): Rule(frozenset(ROLES), "own_org"),
    ("GET", "/v1/chains"): OPERATOR,
    ("GET", "/v1/chains/{org}"): _rule("auditor", "publisher_admin", scope="path_org"),
    ("GET", "/v1/chains/{org}/entries"): _rule("auditor", scope="path_org"),
    ("GET", "/v1/chains/{org}/export"): _rule("auditor", scope="path_org"),
    ("GET", "/v1/quarantine"): _rule("auditor", "publisher_admin", scope="own_org"),
    ("POST", "/v1/orgs/{org}/nats-credentials"): _rule("publisher_admin", scope="path_org"),
    ("GET", "/v1/orgs/{org}/nats-credentials"): _rule("publisher_admin", scope="path_org"),
    ("DELETE", "/v1/orgs/{org}/nats-credentials/{public_key}"): _rule(
        "publisher_admin", scope="path_org"
    ),
}
"""(method, route template) -> who may call it. `/schema...` (the OpenAPI
document and its viewers) needs any key; see `rule_for`."""

OPENAPI_PREFIX = "/schema"


def rule_for(method: str, path_template: str) -> Rule | None:
    """The rule of a route; None for a route the matrix does not know (refused to all).

    OPTIONS (answered by the framework with the allowed methods, no data) follows
    the rule of GET on the same route (or else POST, or else DELETE)."""
    if path_template == OPENAPI_PREFIX or path_template.startswith(OPENAPI_PREFIX + "/"):
        return ANY_KEY
    if method == "OPTIONS":
        known = (m for m in ("GET", "POST", "DELETE") if (m, path_template) in MATRIX)
        method = next(known, "GET")
    return MATRIX.get((method, path_template))


@dataclass(frozen=True, slots=True)
class Refusal:
    status: Literal[401, 403]
    detail: str


def decide(rule: Rule | None, caller: Principal | None, named_org: str | None) -> Refusal | None:
    """None when `caller` may call a route with `rule`, else why not. `named_org`
    is the org the request names (its `{org}`, or `?org=` on a listing). A
    refusal never names another org."""
    if rule is None:
        return Refusal(403, "this route is not open to any API key")
    if rule.roles is None:
        return None
    if caller is None:
        return Refusal(401, "this route needs an API key: send 'Authorization: Bearer <key>'")
    if caller.role not in rule.roles:
        return Refusal(403, f"the {caller.role} role may not call this route")
    if caller.is_operator or rule.scope == "any":
        return None
    if named_org == caller.org or (rule.scope == "own_org" and named_org is None):
        return None
    return Refusal(403, f"this {caller.role} key reads its own org's data only")


def visible_org(caller: Principal) -> str | None:
    """The org an `own_org` listing is limited to; None (every org) for operators."""
    if caller.is_operator:
        return None
    assert caller.org is not None, "only operator keys belong to no org"
    return caller.org
