"""The ledger's own errors; SQLite errors are translated to these in one place (store.py)."""

from __future__ import annotations


class LedgerError(Exception):
    """Base of every error the ledger raises on purpose."""


class NotFound(LedgerError):
    """Raised when an id or prefix names nothing in the ledger."""


class Ambiguous(LedgerError):
    """Raised when a short id prefix matches more than one thing; ``matches`` lists them."""

    def __init__(self, message: str, matches: list[str]) -> None:
        super().__init__(message)
        self.matches = matches


class SchemaTooNew(LedgerError):
    """Raised when the database was written by a newer podlink than this one."""


class StorageError(LedgerError):
    """Raised when SQLite fails (disk full, locked, corrupt); the batch was rolled back."""
