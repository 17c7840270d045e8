-- Signed checkpoints of chain heads (C2SP signed notes, docs/ledger-format.md §12).
-- Append-only like the log: a checkpoint, once signed and stored, stays.

CREATE TABLE checkpoints (
    chain        text NOT NULL REFERENCES chains (chain),
    size         bigint NOT NULL CHECK (size >= 0),
    head_hash    bytea NOT NULL CHECK (length(head_hash) = 32),
    signed_at    timestamptz NOT NULL,
    key_name     text NOT NULL,
    key_id       text NOT NULL,             -- the ledger key's id (same rule as publisher keys)
    note         text NOT NULL,             -- the signed note, exactly as served
    PRIMARY KEY (chain, size)
);

CREATE TRIGGER checkpoints_append_only
    BEFORE UPDATE OR DELETE ON checkpoints
    FOR EACH ROW EXECUTE FUNCTION trustledger_refuse_change();
CREATE TRIGGER checkpoints_no_truncate
    BEFORE TRUNCATE ON checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION trustledger_refuse_change();

REVOKE UPDATE, DELETE, TRUNCATE ON checkpoints FROM PUBLIC;
