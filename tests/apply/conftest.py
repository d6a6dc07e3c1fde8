"""Fixtures of the apply tests."""

from tests.apply.pair import pair

__all__ = ["pair"]
