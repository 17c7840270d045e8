-- One writer per ingest consumer, and a quarantine that holds each stream
-- message at most once (docs/reliability.md).

-- Fencing: a process that takes over a consumer (under the advisory lock of
-- that consumer, held for the process's life) increments `writer_epoch`; every
-- batch transaction first locks this row and checks that the epoch is still
-- its own. A writer that lost its lock (its session died, another process took
-- over) therefore cannot commit one more batch, whatever it believes.
ALTER TABLE ingest_positions
    ADD COLUMN writer_epoch bigint NOT NULL DEFAULT 0,
    ADD COLUMN writer       text NOT NULL DEFAULT '';   -- host:pid of the current writer

-- Ingest processes a redelivered message again instead of dropping it by its
-- position (it may never have been processed), so the quarantine must recognise
-- a message it already holds: (stream incarnation, stream sequence) is unique.
-- Rows from before this migration and operator submissions have no incarnation.
ALTER TABLE quarantine ADD COLUMN stream_incarnation text;
CREATE UNIQUE INDEX quarantine_stream_message ON quarantine (stream_incarnation, stream_seq)
    WHERE stream_incarnation IS NOT NULL AND stream_seq IS NOT NULL;
