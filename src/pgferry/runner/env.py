"""Environment variables between the launcher and its worker processes.

The log level and format are read by every command too (``-v``/``-q`` and
``--log-format`` take precedence); ``pgferry run`` passes what it was given to
its workers in these variables, and ``--receiver-timeout`` in
:data:`~pgferry.stream.connection.RECEIVER_TIMEOUT_ENV`.
"""

#: The subscriber DSN (in the environment, not argv, so no password shows in ps).
DSN_ENV = "PGFERRY_SUBSCRIBER_DSN"
#: The launcher's pid: a worker whose parent is already gone exits at once.
LAUNCHER_PID_ENV = "PGFERRY_LAUNCHER_PID"
#: Log level (DEBUG, INFO, WARNING, ERROR) where no -v/-q says; workers: INFO.
LOG_LEVEL_ENV = "PGFERRY_LOG_LEVEL"
#: Log format (text or json) where no --log-format says; default text.
LOG_FORMAT_ENV = "PGFERRY_LOG_FORMAT"
