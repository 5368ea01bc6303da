"""podlink.node."""
