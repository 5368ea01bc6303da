"""podlink.ledger."""
