"""The optional C module is there where it must be."""

from __future__ import annotations

import os

import pytest

from pgferry._cmodule import SPEEDUPS


def test_ci_builds_the_c_module() -> None:
    # Its build is optional (no compiler: the Python twins run), so a C file that
    # does not compile would only skip the tests of the C twins, silently.
    if not os.environ.get("CI") or os.environ.get("PGFERRY_PURE_PYTHON"):
        pytest.skip("outside CI the C module is optional")
    assert SPEEDUPS is not None, "pgferry._speedups was not built: see pip's output"
