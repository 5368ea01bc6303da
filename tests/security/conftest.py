"""The node tests' fixtures (``network``, ``session``), shared with the security tests."""

from tests.node.conftest import network, session

__all__ = ["network", "session"]
