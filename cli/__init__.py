"""podlink.cli."""
