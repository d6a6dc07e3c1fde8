"""pgferry: a PostgreSQL logical replication engine written in Python.

The package is layered so that data flows one way:

    stream (I/O, feedback) -> protocol (bytes -> typed messages)
        -> transaction assembler -> consumer (CDC writer, applier) -> progress

``pgferry.protocol`` is pure (no sockets), ``pgferry.stream`` owns the replication
connection, ``pgferry.cdc`` turns decoded transactions into change records, and
``pgferry.testing`` starts throwaway PostgreSQL clusters for tests.
"""

__version__ = "0.1.0"
