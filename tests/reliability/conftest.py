"""The node tests' fixtures (``network``, ``session``), shared with the reliability tests."""

from tests.node.conftest import network, session

__all__ = ["network", "session"]
