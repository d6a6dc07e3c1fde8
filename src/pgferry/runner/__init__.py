"""Running workers: the launcher and the worker process entry point.

:class:`Launcher` is loaded on first use: a command that reads only the
environment's names (:mod:`.env`: every command's logging options) does not
load the launcher with its package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pgferry.runner.launcher import Launcher

__all__ = ["Launcher"]


def __getattr__(name: str) -> Any:
    if name == "Launcher":
        return importlib.import_module("pgferry.runner.launcher").Launcher
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
