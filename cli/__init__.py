"""podlink.cli: the `podlink` command organizers use (console script podlink.cli.main:main)."""
