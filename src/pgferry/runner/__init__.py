"""Running workers: the launcher and the worker process entry point."""

from pgferry.runner.launcher import Launcher

__all__ = ["Launcher"]
