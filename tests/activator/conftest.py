"""Fixtures for the activator tests; the helpers live in activator_support (a module named
``conftest`` here would clash with tests/runtime's in one pytest session)."""

from .activator_support import activator, backends

__all__ = ["activator", "backends"]
