-- The hash-chained event log, the publisher key registry and the quarantine.
-- Byte-level rule for entry_hash: docs/ledger-format.md.

CREATE TABLE chains (
    chain       text PRIMARY KEY,          -- the org id; one chain per org
    head_seq    bigint NOT NULL DEFAULT 0 CHECK (head_seq >= 0),
    head_hash   bytea NOT NULL DEFAULT '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE ledger_entries (
    chain        text NOT NULL REFERENCES chains (chain),
    seq          bigint NOT NULL CHECK (seq >= 1),
    event_id     text NOT NULL,
    kind         text NOT NULL,
    agent_org    text,                      -- the agent the event is about, if any
    agent        text,
    occurred_at  timestamptz NOT NULL,      -- publisher's claim
    received_at  timestamptz NOT NULL,      -- ledger's clock; hashed (microseconds)
    key_id       text NOT NULL,
    signature    bytea NOT NULL CHECK (length(signature) = 64),
    event_bytes  bytea NOT NULL,            -- the exact published bytes
    prev_hash    bytea NOT NULL CHECK (length(prev_hash) = 32),
    entry_hash   bytea NOT NULL CHECK (length(entry_hash) = 32),
    stream_seq   bigint,                    -- JetStream sequence; NULL for operator appends
    PRIMARY KEY (chain, seq),
    -- The ledger's own exactly-once guarantee, independent of the broker's dedupe window.
    UNIQUE (chain, event_id)
);

CREATE INDEX ledger_entries_agent ON ledger_entries (agent_org, agent, chain, seq);
CREATE INDEX ledger_entries_received ON ledger_entries (chain, received_at);

CREATE TABLE publisher_keys (
    key_id          text PRIMARY KEY,
    org             text NOT NULL,
    public_key      bytea NOT NULL UNIQUE CHECK (length(public_key) = 32),
    label           text NOT NULL DEFAULT '',
    registered_seq  bigint NOT NULL,        -- entry in the org's chain that registered it
    revoked_seq     bigint,                 -- entry that revoked it
    FOREIGN KEY (org, registered_seq) REFERENCES ledger_entries (chain, seq)
);

CREATE TABLE quarantine (
    id           bigserial PRIMARY KEY,
    stream_seq   bigint,                    -- JetStream sequence (NULL for operator submissions)
    subject      text NOT NULL,
    claimed_org  text,                      -- org token of the subject, unverified
    key_id       text,
    signature    text,                      -- header as received, unverified
    reason       text NOT NULL,
    detail       text NOT NULL,
    raw          bytea NOT NULL,            -- the exact bytes received
    received_at  timestamptz NOT NULL
);

CREATE INDEX quarantine_org ON quarantine (claimed_org, id);
-- No uniqueness on stream_seq: sequences restart when a stream is recreated, and
-- a message is never quarantined twice anyway, since ingest resumes after the
-- position committed with the batch that quarantined it (ingest_positions).

-- Where each ingest consumer has got to in the stream, written in the same
-- transaction as the entries it produced. At start the consumer is recreated
-- from here, so after a crash delivery resumes exactly after the last commit,
-- in stream order (redelivery by the broker could otherwise overtake it).
CREATE TABLE ingest_positions (
    consumer        text PRIMARY KEY,
    stream          text NOT NULL,
    stream_created  text NOT NULL,          -- identifies the stream incarnation
    stream_seq      bigint NOT NULL
);

-- Append-only, enforced by the database: whatever the application does, rows of
-- the log and the quarantine can be neither changed nor removed.
CREATE FUNCTION trustledger_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'trustledger: % on % is refused: the table is append-only', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER ledger_entries_append_only
    BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION trustledger_refuse_change();
CREATE TRIGGER ledger_entries_no_truncate
    BEFORE TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION trustledger_refuse_change();
CREATE TRIGGER quarantine_append_only
    BEFORE UPDATE OR DELETE ON quarantine
    FOR EACH ROW EXECUTE FUNCTION trustledger_refuse_change();
CREATE TRIGGER quarantine_no_truncate
    BEFORE TRUNCATE ON quarantine
    FOR EACH STATEMENT EXECUTE FUNCTION trustledger_refuse_change();

REVOKE UPDATE, DELETE, TRUNCATE ON ledger_entries, quarantine FROM PUBLIC;
