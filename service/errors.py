"""The exception tree. Every error the service raises on purpose is one of these.

    TrustLedgerError
    ├── ConfigError            bad or missing configuration
    ├── StorageError           the database failed or refused (adapters translate driver errors)
    │   └── MigrationError     applied migrations differ from the files, or one failed
    ├── IntegrityError         the stored ledger does not verify; nothing is signed over it
    ├── BrokerError            NATS / JetStream failed
    ├── EmbeddedServerError    an embedded server would not start (service.adapters.embedded)
    ├── NotFoundError          a queried org, agent or entry does not exist
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


class MigrationError(StorageError):
    """Migrations could not be applied, or the database disagrees with the files."""


class IntegrityError(TrustLedgerError):
    """The stored ledger does not verify (tampering or corruption); names the finding."""


class BrokerError(TrustLedgerError):
    """NATS or JetStream failed."""


class NotFoundError(TrustLedgerError):
    """The requested resource does not exist."""


class AdmissionError(TrustLedgerError):
    """An event submitted directly (by the operator) failed admission; says why."""


class PublishError(TrustLedgerError):
    """An event could not be published."""
