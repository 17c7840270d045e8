"""The exception tree. Every error the service raises on purpose is one of these.

    TrustLedgerError
    ├── ConfigError            bad or missing configuration
    ├── StorageError           the database refused an operation (adapters translate driver errors)
    │   ├── StorageUnavailableError  transient: connection lost, server restarting or out of
    │   │                            resources, a serialization conflict; the same work may succeed later
    │   ├── WriterFencedError  another process took over this ingest consumer; stop writing
    │   └── MigrationError     applied migrations differ from the files, or one failed
    ├── IntegrityError         the stored ledger does not verify; nothing is signed over it
    ├── BrokerError            NATS / JetStream failed
    │   └── DeliveryGapError   the consumer's delivery sequence skipped: deliveries were lost
    ├── EmbeddedServerError    an embedded server would not start (service.adapters.embedded)
    ├── NotFoundError          a queried org, agent or entry does not exist
    ├── ConflictError          the request conflicts with the service's state (a limit
    │                          reached, a feature this deployment does not configure)
    ├── AdmissionError         an event handed in directly (not via NATS) was refused
    └── PublishError           a publisher could not get an event accepted by the broker

The CLI maps these to exit codes in one place (`service.cli`), the HTTP API to
problem-details responses in one place (`service.api.problems`).
"""

from __future__ import annotations


class TrustLedgerError(Exception):
    """Base of every error the service raises on purpose."""


class ConfigError(TrustLedgerError):
    """Configuration is missing or invalid."""


class StorageError(TrustLedgerError):
    """The database failed or refused an operation."""


class StorageUnavailableError(StorageError):
    """The database could not be reached or asked us to retry: a transient failure.

    Everything else a `StorageError` says is a refusal of the work itself (bad data,
    a constraint): retrying the same work would fail the same way."""


class WriterFencedError(StorageError):
    """This process no longer holds the ingest consumer: a newer writer has taken over."""


class MigrationError(StorageError):
    """Migrations could not be applied, or the database disagrees with the files."""


class IntegrityError(TrustLedgerError):
    """The stored ledger does not verify (tampering or corruption); names the finding."""


class BrokerError(TrustLedgerError):
    """NATS or JetStream failed."""


class DeliveryGapError(BrokerError):
    """Deliveries went missing in transit (a broken connection): the consumer must be
    rebound from the committed position before anything later is processed."""


class NotFoundError(TrustLedgerError):
    """The requested resource does not exist."""


class ConflictError(TrustLedgerError):
    """The request cannot be met in the service's present state: a limit is reached,
    or it needs something this deployment does not configure; says what."""


class AdmissionError(TrustLedgerError):
    """An event submitted directly (by the operator) failed admission; says why."""


class PublishError(TrustLedgerError):
    """An event could not be published."""
