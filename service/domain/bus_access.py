"""Who may do what on the bus: the NATS users of a deployment and their permissions.

Pure rules, no I/O. Each org publishes as its own NATS user (an nkey: the server
keeps only the public key, the org keeps the seed), allowed to publish only on
its own subjects `<prefix>.ev.<org>.>` and to subscribe only to its own inbox
`_INBOX.<prefix>.<org>.>`, where the JetStream acks of its publishes arrive.
The service's own user (ingest, api, scheduler, the operator's CLI on the
service's machine) may do everything: consume the stream, manage the stream and
its consumer. `render_users_conf` writes these users as the `authorization`
block nats-server reads; docs/operations.md §8 tells what this protects.

Why a per-org inbox: a JetStream publish waits for its ack on a reply subject the
client subscribes to. With the usual `_INBOX.>` any org could also subscribe to
the inboxes where the ingest process receives every org's messages (its pull
fetches) and other orgs' acks. Org slugs never start with `_`, so the service's
inbox `_INBOX.<prefix>._service` can never fall under an org's pattern.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from service.domain.events import SLUG_PATTERN

PUBLIC_NKEY_PATTERN = r"^U[A-Z2-7]{55}$"
"""A NATS user public key: `U` then base32 (RFC 4648 alphabet, no padding), 56 characters."""
ALL_SUBJECTS = ">"
SERVICE_INBOX_TOKEN = "_service"  # noqa: S105 - a subject token, not a secret

_PUBLIC_NKEY = re.compile(PUBLIC_NKEY_PATTERN)
_SLUG = re.compile(SLUG_PATTERN)
_PREFIX = re.compile(r"^[A-Za-z0-9_-]+$")
# What a permission subject may hold here: dot-separated tokens of our own making.
_SUBJECT = re.compile(r"^[A-Za-z0-9_$-]+(\.[A-Za-z0-9_$-]+)*(\.>)?$|^>$")


class BusAccessError(ValueError):
    """A NATS user, org or subject prefix that cannot be written into the server's config."""


def _check_prefix(subject_prefix: str) -> str:
    if not _PREFIX.match(subject_prefix):
        raise BusAccessError(f"subject prefix {subject_prefix!r} is not one token")
    return subject_prefix


def _check_org(org: str) -> str:
    if not _SLUG.match(org):
        raise BusAccessError(f"{org!r} is not an org id")
    return org


def is_public_nkey(text: str) -> bool:
    """True when `text` has the form of a NATS user public key (checksum not checked)."""
    return bool(_PUBLIC_NKEY.match(text))


def org_publish_subjects(subject_prefix: str, org: str) -> str:
    """Where `org` may publish: its own event subjects, `<prefix>.ev.<org>.>`."""
    return f"{_check_prefix(subject_prefix)}.ev.{_check_org(org)}.>"


def org_inbox_prefix(subject_prefix: str, org: str) -> str:
    """The inbox prefix an org's client must use (nats-py `inbox_prefix`, nats.go
    `CustomInboxPrefix`, nats.js `inboxPrefix`): `_INBOX.<prefix>.<org>`."""
    return f"_INBOX.{_check_prefix(subject_prefix)}.{_check_org(org)}"


def service_inbox_prefix(subject_prefix: str) -> str:
    """The service's inbox prefix: outside every org's inbox pattern."""
    return f"_INBOX.{_check_prefix(subject_prefix)}.{SERVICE_INBOX_TOKEN}"


@dataclass(frozen=True, slots=True)
class NatsUser:
    """One NATS user: its public nkey and what it may publish and subscribe to."""

    public_key: str
    org: str | None
    """The org it publishes for; None for the service's own user."""
    label: str
    created_at: datetime
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    revoked_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True, slots=True)
class IssuedUser:
    user: NatsUser
    seed: str
    """The user's nkey seed (`SU...`): shown once to its holder; only the public key is kept."""


def org_user(
    public_key: str, org: str, subject_prefix: str, label: str, created_at: datetime
) -> NatsUser:
    """An org's publisher: its own subjects, its own inbox, nothing else (no `$JS.API`)."""
    return _checked(
        NatsUser(
            public_key=public_key,
            org=_check_org(org),
            label=label,
            created_at=created_at,
            publish=(org_publish_subjects(subject_prefix, org),),
            subscribe=(f"{org_inbox_prefix(subject_prefix, org)}.>",),
        )
    )


def service_user(public_key: str, created_at: datetime) -> NatsUser:
    """The service itself: consumes the stream and manages it, so it may do everything."""
    return _checked(
        NatsUser(
            public_key=public_key,
            org=None,
            label="trustledger service (ingest, api, scheduler, operator CLI)",
            created_at=created_at,
            publish=(ALL_SUBJECTS,),
            subscribe=(ALL_SUBJECTS,),
        )
    )


def _checked(user: NatsUser) -> NatsUser:
    if not is_public_nkey(user.public_key):
        raise BusAccessError(f"{user.public_key!r} is not a NATS user public key")
    for subject in (*user.publish, *user.subscribe):
        if not _SUBJECT.match(subject):
            raise BusAccessError(f"{subject!r} is not a permission subject")
    return user


def _quoted(items: Iterable[str]) -> str:
    # Every item matched _SUBJECT or PUBLIC_NKEY_PATTERN: nothing to escape.
    return ", ".join(f'"{item}"' for item in items)


def render_users_conf(users: Iterable[NatsUser]) -> str:
    """The `authorization` block listing the active users, in nats-server's config syntax.

    Only public keys and subjects go into it, each checked against its pattern
    when the user was made, so nothing an org chose can change the block's
    structure. Labels stay out (they are free text)."""
    lines = [
        "# Written by trustledger from users.json; edits here are overwritten.",
        "authorization {",
        "  users = [",
    ]
    for user in users:
        user = _checked(user)
        if not user.active:
            continue
        who = "service" if user.org is None else f"org {user.org}"
        lines.append(
            f'    {{ nkey: "{user.public_key}", permissions: {{'
            f" publish: {{ allow: [{_quoted(user.publish)}] }},"
            f" subscribe: {{ allow: [{_quoted(user.subscribe)}] }} }} }}  # {who}"
        )
    lines += ["  ]", "}", ""]
    return "\n".join(lines)
