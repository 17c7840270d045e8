-- The posture model became trustledger-posture/v2 (each observing org's weight
-- is bounded: docs/posture-model.md §6.5). The scheduler's cached assessments
-- were computed with v1: queue every cached agent, so `?max_age_s=` answers are
-- computed live until the scheduler has re-assessed it with v2, and
-- `GET /v1/postures` catches up within a few ticks.
INSERT INTO posture_due (org, agent)
SELECT org, agent FROM agent_posture
ON CONFLICT (org, agent) DO UPDATE SET generation = posture_due.generation + 1;
