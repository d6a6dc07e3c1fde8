"""Environment variables between the launcher and its worker processes."""

#: The subscriber DSN (in the environment, not argv, so no password shows in ps).
DSN_ENV = "PGFERRY_SUBSCRIBER_DSN"
#: The launcher's pid: a worker whose parent is already gone exits at once.
LAUNCHER_PID_ENV = "PGFERRY_LAUNCHER_PID"
#: Log level of the workers (default INFO).
LOG_LEVEL_ENV = "PGFERRY_LOG_LEVEL"
