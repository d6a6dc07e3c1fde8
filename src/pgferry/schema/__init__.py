"""The subscriber's schema: copied from the publisher, and compared with it.

* :mod:`.dump`: the ``pg_dump`` / ``pg_restore`` binaries new enough for a
  publisher, and the publisher's schema as a list of dumped objects;
* :mod:`.needed`: which of those objects the published tables need;
* :mod:`.copy`: creates them on the subscriber: everything before the data in one
  transaction at ``create`` (or ``refresh``), and the steps after each table's
  data (indexes, constraints, triggers) stored in ``pgferry.schema_step`` for
  the table's sync worker;
* :mod:`.diff`: ``pgferry schema diff``: the subscriber's objects for a
  subscription compared with the publisher's.
"""
