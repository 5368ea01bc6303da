"""The node tests' ``network`` fixture, shared with the protocol tests that need real nodes."""

from tests.node.conftest import network

__all__ = ["network"]
