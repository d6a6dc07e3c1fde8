"""DDL replication: a schema migration on the publisher goes on to the subscriber.

* :mod:`.capture`: what ``publication create --ddl`` installs on the publisher:
  event triggers recording each DDL statement that touches a DDL publication's
  objects in the published queue table ``pgferry_ddl.queue``, so it travels in
  the transaction and WAL position of the changes around it;
* :mod:`.classify`: pure code: a queue row, whether replaying it gives the same
  data (``ddl_unsafe`` decides otherwise), the text the subscriber runs;
* :mod:`.execute`: the apply worker's side: each queue insert run at its place,
  in the local transaction holding the changes around it, and the
  subscription's tables following it.

See docs/design.md, "DDL replication".
"""
