"""Shared fixtures: real keys, real SQLite files, real servers on 127.0.0.1."""
