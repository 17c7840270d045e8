-- The posture engine (docs/posture-model.md): evidence rows replace the first
-- projection's counters. Every row below `posture_due` is written from exactly
-- one chain, so a rebuild from the log reproduces them byte for byte.
--
-- The projection tables are emptied and their positions forgotten: the next
-- ingest or `up` start sees positions behind the chain heads and rebuilds
-- them from the log (`trustledger projections rebuild` does the same by hand).

DROP TABLE agent_posture;
DROP TABLE agent_observations;
TRUNCATE agents, commitments, projection_positions;

ALTER TABLE agents
    ADD COLUMN registered_received_at timestamptz NOT NULL,
    ADD COLUMN retired_at timestamptz,            -- the retirement's occurred_at
    ADD COLUMN retired_received_at timestamptz;

-- `commitments` keeps the latest version of each commitment (for listing);
-- the full history is in `commitment_versions`.
ALTER TABLE commitments
    ADD COLUMN revoked_seq bigint,
    ADD COLUMN revoked_received_at timestamptz;

CREATE TABLE commitment_versions (
    org             text NOT NULL,
    agent           text NOT NULL,
    commitment_id   text NOT NULL,
    version         integer NOT NULL,
    terms_json      text NOT NULL,          -- msgspec's deterministic JSON of the terms
    effective_from  timestamptz NOT NULL,   -- the declaring / amending event's occurred_at
    seq             bigint NOT NULL,        -- its entry in the org's chain
    received_at     timestamptz NOT NULL,
    PRIMARY KEY (org, agent, commitment_id, version)
);

-- The rolling window of each charged commitment: its charges are the verdict
-- rows with `charge_commitment` = it and `occurred_at > cutoff`.
CREATE TABLE commitment_windows (
    org            text NOT NULL,
    agent          text NOT NULL,
    commitment_id  text NOT NULL,
    cutoff         timestamptz,             -- NULL: nothing pruned yet
    charged_seq    bigint NOT NULL,         -- the newest verdict charged (a version of the window)
    PRIMARY KEY (org, agent, commitment_id)
);

-- One row per self-reported action (action.performed), with its verdict.
CREATE TABLE action_verdicts (
    org               text NOT NULL,        -- the chain
    seq               bigint NOT NULL,
    agent             text NOT NULL,
    event_id          text NOT NULL,
    occurred_at       timestamptz NOT NULL,
    received_at       timestamptz NOT NULL,
    action            text NOT NULL,
    resource          text NOT NULL,
    amount_minor      bigint,
    currency          text,
    data_classes      text[] NOT NULL,
    correlation_id    text,
    within            boolean NOT NULL,
    severity          smallint NOT NULL,    -- highest severity of the violations, 0 within bounds
    violations_json   text NOT NULL,        -- [{kind, severity, commitment_id, detail}]
    covering          text,                 -- the commitment that covers it (within bounds)
    ref_seq           bigint,               -- the commitment version judged against (same chain)
    charge_commitment text,                 -- whose rolling window it was charged to
    charge_amount     bigint,
    PRIMARY KEY (org, seq)
);
CREATE INDEX action_verdicts_by_time ON action_verdicts (org, agent, occurred_at);
CREATE INDEX action_verdicts_by_correlation ON action_verdicts (org, agent, correlation_id)
    WHERE correlation_id IS NOT NULL;
CREATE INDEX action_verdicts_by_charge ON action_verdicts (org, agent, charge_commitment, occurred_at)
    WHERE charge_commitment IS NOT NULL;

-- One row per gateway observation (action.observed), written from the observer's chain.
CREATE TABLE observations (
    observer        text NOT NULL,          -- the gateway's org (its chain)
    seq             bigint NOT NULL,
    event_id        text NOT NULL,
    org             text NOT NULL,          -- the observed agent
    agent           text NOT NULL,
    gateway         text NOT NULL,
    occurred_at     timestamptz NOT NULL,
    received_at     timestamptz NOT NULL,
    action          text NOT NULL,
    resource        text NOT NULL,
    amount_minor    bigint,
    currency        text,
    data_classes    text[] NOT NULL,
    correlation_id  text,
    PRIMARY KEY (observer, seq)
);
CREATE INDEX observations_by_time ON observations (org, agent, occurred_at);
CREATE INDEX observations_by_receipt ON observations (org, agent, received_at);

-- Not projections of the log: the scheduler's view of every agent's posture as
-- of its last tick (a cache of the pure model, rewritten on every change), and
-- the queue of agents whose evidence changed since (ingest adds, the
-- scheduler takes). A rebuild empties the cache and queues every agent.
CREATE TABLE agent_posture (
    org             text NOT NULL,
    agent           text NOT NULL,
    as_of           timestamptz NOT NULL,
    band            text NOT NULL,
    score           integer,
    confidence      integer NOT NULL,
    next_change_at  timestamptz,
    next_change     text,
    report_json     text NOT NULL,          -- the whole assessment, served by ?max_age_s=
    PRIMARY KEY (org, agent)
);
CREATE INDEX agent_posture_due ON agent_posture (next_change_at) WHERE next_change_at IS NOT NULL;
CREATE INDEX agent_posture_by_band ON agent_posture (band, org, agent);

CREATE TABLE posture_due (
    org         text NOT NULL,
    agent       text NOT NULL,
    generation  bigint NOT NULL DEFAULT 0,  -- bumped by every batch that touches the agent
    PRIMARY KEY (org, agent)
);
