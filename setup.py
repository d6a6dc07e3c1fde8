"""Builds the optional C twins of the hottest functions (pgferry._speedups).

Everything else is in pyproject.toml. Without a C compiler the build goes on
without them: pgferry then runs its pure-Python code only.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("pgferry._speedups", ["src/pgferry/_speedups.c"], optional=True),
    ]
)
