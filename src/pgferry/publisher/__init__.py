"""The publication side: publications on a real PostgreSQL publisher.

* :mod:`pgferry.publisher.spec` - table specs (``schema.table (cols) WHERE (expr)``),
  a pure parser;
* :mod:`pgferry.publisher.validate` - checks: ``--with`` options, server
  features, ``wal_level``, tables that exist, replica identity problems;
* :mod:`pgferry.publisher.manage` - create, alter, drop and list publications.
"""

from pgferry.publisher.manage import (
    ChangeResult,
    PublicationInfo,
    PublishedTable,
    alter_publication,
    connect,
    create_publication,
    drop_publication,
    list_publications,
    to_json,
)
from pgferry.publisher.spec import (
    TableSpec,
    TableSpecError,
    parse_identifier,
    parse_table_name,
    parse_table_spec,
)
from pgferry.publisher.validate import (
    IdentityIssue,
    PublicationAlreadyExists,
    PublicationOptions,
    SchemaNotFound,
    TableNotFound,
    identity_issues,
    parse_with,
)

__all__ = [
    "ChangeResult",
    "IdentityIssue",
    "PublicationAlreadyExists",
    "PublicationInfo",
    "PublicationOptions",
    "PublishedTable",
    "SchemaNotFound",
    "TableNotFound",
    "TableSpec",
    "TableSpecError",
    "alter_publication",
    "connect",
    "create_publication",
    "drop_publication",
    "identity_issues",
    "list_publications",
    "parse_identifier",
    "parse_table_name",
    "parse_table_spec",
    "parse_with",
    "to_json",
]
