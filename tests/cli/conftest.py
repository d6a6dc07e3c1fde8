"""Fixtures of the command line tests."""

from tests.apply.pair import pair

__all__ = ["pair"]
