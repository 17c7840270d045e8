-- Projections: state derived from the log, rebuildable from it at any time
-- (`trustledger projections rebuild`). Each projection records, per chain, the
-- last entry it has applied, in the same transaction as its output.

CREATE TABLE projection_positions (
    projection  text NOT NULL,
    chain       text NOT NULL,
    seq         bigint NOT NULL,
    PRIMARY KEY (projection, chain)
);

CREATE TABLE agents (
    org             text NOT NULL,
    agent           text NOT NULL,
    display_name    text NOT NULL,
    principal       text NOT NULL,
    registered_seq  bigint NOT NULL,
    retired_seq     bigint,
    PRIMARY KEY (org, agent)
);

CREATE TABLE commitments (
    org            text NOT NULL,
    agent          text NOT NULL,
    commitment_id  text NOT NULL,
    version        integer NOT NULL,
    terms_json     text NOT NULL,          -- msgspec's deterministic JSON of the terms
    valid_from     timestamptz NOT NULL,
    valid_until    timestamptz,
    revoked_at     timestamptz,
    declared_seq   bigint NOT NULL,
    updated_seq    bigint NOT NULL,
    PRIMARY KEY (org, agent, commitment_id)
);

CREATE TABLE agent_posture (
    org              text NOT NULL,
    agent            text NOT NULL,
    actions_total    bigint NOT NULL DEFAULT 0,
    actions_within   bigint NOT NULL DEFAULT 0,
    actions_outside  bigint NOT NULL DEFAULT 0,
    last_action_at   timestamptz,
    last_violation   text,                  -- kind of the latest violation, if any
    last_violation_chain text,
    last_violation_seq   bigint,
    PRIMARY KEY (org, agent)
);

-- Gateway observations, one row per observing org and observed agent. Kept
-- apart from agent_posture so that every projection row is written only by the
-- writer of one chain: the observer's chain here, the agent's own chain there.
-- Two ingest processes owning different orgs never update the same row.
CREATE TABLE agent_observations (
    observer          text NOT NULL,        -- the gateway's org (its chain)
    org               text NOT NULL,        -- the observed agent
    agent             text NOT NULL,
    observed_total    bigint NOT NULL DEFAULT 0,
    last_observed_at  timestamptz,
    PRIMARY KEY (org, agent, observer)
);
