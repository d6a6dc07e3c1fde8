"""Project-wide pytest setup: real PostgreSQL fixtures from pgferry.testing.

``pytester`` is enabled for the tests of the pytest plugin itself.
"""

pytest_plugins = ["pgferry.testing.pytest_plugin", "pytester"]
