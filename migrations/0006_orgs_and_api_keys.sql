-- Who may call the HTTP API: organisations and their API keys (docs/api.md).
--
-- A key is `tlk_<key_id>_<secret>`; only a BLAKE3 hash of the whole key is
-- stored (docs/api.md, "API keys"), so a copy of this table lets nobody call
-- the API. Unlike the log, these rows change: a key is revoked, and its last
-- use is noted (at most once a minute per key and process).

CREATE TABLE orgs (
    org           text PRIMARY KEY CHECK (org ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    display_name  text NOT NULL DEFAULT '' CHECK (length(display_name) <= 200),
    created_at    timestamptz NOT NULL
);

CREATE TABLE api_keys (
    key_id        text PRIMARY KEY CHECK (key_id ~ '^[0-9a-f]{12}$'),   -- the visible prefix
    -- Operators run the service and belong to no org; every other role acts for one.
    org           text REFERENCES orgs (org),
    role          text NOT NULL
                  CHECK (role IN ('relying_party', 'publisher_admin', 'auditor', 'operator')),
    label         text NOT NULL DEFAULT '' CHECK (length(label) <= 200),
    secret_hash   bytea NOT NULL CHECK (length(secret_hash) = 32),
    created_at    timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL,
    revoked_at    timestamptz,
    last_used_at  timestamptz,
    CHECK ((role = 'operator') = (org IS NULL)),
    CHECK (expires_at > created_at)
);

CREATE INDEX api_keys_org ON api_keys (org, created_at);
