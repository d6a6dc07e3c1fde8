"""The ``pgferry`` command line. Each command lives in its own module."""
