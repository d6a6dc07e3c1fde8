"""Publications on a real publisher: create, alter, drop, list, and the checks
(wal_level, missing objects, replica identity) against PostgreSQL's own behaviour."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import errors as pg_errors

from pgferry.errors import (
    FeatureNotSupported,
    InterfaceError,
    PublicationNotFound,
    ServerError,
    WalLevelNotLogical,
)
from pgferry.publisher import (
    PublicationAlreadyExists,
    PublicationInfo,
    PublicationOptions,
    PublishedTable,
    SchemaNotFound,
    TableNotFound,
    TableSpec,
    alter_publication,
    connect,
    create_publication,
    drop_publication,
    identity_issues,
    list_publications,
    parse_table_spec,
)
from pgferry.testing import Cluster
from pgferry.testing.pytest_plugin import ClusterFactory

Conn = psycopg.Connection[Any]


@pytest.fixture
def conn(cluster: Cluster, dbname: str) -> Iterator[Conn]:
    with connect(cluster.dsn(dbname)) as connection:
        yield connection


def specs(*texts: str) -> list[TableSpec]:
    return [parse_table_spec(t) for t in texts]


def published(conn: Conn, publication: str) -> list[tuple[str, str]]:
    rows = conn.execute(
        "SELECT schemaname::text, tablename::text FROM pg_publication_tables"
        " WHERE pubname = %s ORDER BY 1, 2",
        (publication,),
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def filters(conn: Conn, publication: str) -> list[tuple[str, list[str], str | None]]:
    """(table, attnames, rowfilter) from pg_publication_tables (PG 15+)."""
    rows = conn.execute(
        "SELECT tablename::text, attnames::text[], rowfilter FROM pg_publication_tables"
        " WHERE pubname = %s ORDER BY 1",
        (publication,),
    ).fetchall()
    return [(r[0], list(r[1]), r[2]) for r in rows]


def publication_row(conn: Conn, name: str) -> tuple[Any, ...] | None:
    return conn.execute(
        "SELECT pubinsert, pubupdate, pubdelete, pubtruncate, pubviaroot, puballtables"
        " FROM pg_publication WHERE pubname = %s",
        (name,),
    ).fetchone()


def warned_tables(warnings: tuple[str, ...]) -> list[str]:
    """The table named by each replica identity warning ("table X has ...")."""
    return [w[len("table ") : w.index(" has ")] for w in warnings if w.startswith("table ")]


# -- create ---------------------------------------------------------------------------


def test_create_with_weird_names(conn: Conn) -> None:
    conn.execute('CREATE SCHEMA "we ird"; CREATE SCHEMA "s.q""x"')
    conn.execute('CREATE TABLE "we ird".x (id int PRIMARY KEY)')
    conn.execute('CREATE TABLE "s.q""x"."a""b.c" (id int PRIMARY KEY)')
    conn.execute('CREATE TABLE "we ird"".""x" (id int PRIMARY KEY)')  # one name, in public
    name = 'p "1".x; DROP'
    result = create_publication(
        conn,
        name,
        tables=specs('"we ird"."x"', '"s.q""x"."a""b.c"', '"we ird"".""x"'),
    )
    assert result.publication == name
    assert result.warnings == ()
    assert published(conn, name) == [
        ("public", 'we ird"."x'),
        ('s.q"x', 'a"b.c'),
        ("we ird", "x"),
    ]


def test_unqualified_names_follow_the_search_path(conn: Conn) -> None:
    conn.execute("CREATE SCHEMA other; CREATE TABLE other.t (id int PRIMARY KEY)")
    conn.execute("CREATE TABLE public.t (id int PRIMARY KEY)")
    conn.execute("SET search_path = other, public")
    create_publication(conn, "p", tables=specs("t"))
    assert published(conn, "p") == [("other", "t")]


def test_create_options(conn: Conn) -> None:
    conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
    create_publication(
        conn, "p", tables=specs("t"), options=PublicationOptions(("insert", "delete"), True)
    )
    assert publication_row(conn, "p") == (True, False, True, False, True, False)


@pytest.mark.pg_min(15)
def test_column_list_and_row_filter_are_applied(conn: Conn) -> None:
    conn.execute('CREATE TABLE "T x" (id int PRIMARY KEY, "B c" text, n int, secret text)')
    spec = '"T x" (id, "B c", n) WHERE (n > (1 + 1) AND ("B c" LIKE \'%(x)%\' OR "B c" = \'{}\'))'
    result = create_publication(conn, "p", tables=specs(spec))
    # The filter uses n and "B c", which are not in the replica identity (id).
    assert warned_tables(result.warnings) == ['public."T x"']
    ((table, attnames, rowfilter),) = filters(conn, "p")
    assert (table, attnames) == ("T x", ["id", "B c", "n"])
    assert rowfilter is not None
    assert "n > (1 + 1)" in rowfilter and "'%(x)%'" in rowfilter and "'{}'" in rowfilter


@pytest.mark.pg_min(15)
def test_tables_in_schema(conn: Conn) -> None:
    conn.execute("CREATE SCHEMA sales; CREATE TABLE sales.a (id int PRIMARY KEY)")
    conn.execute("CREATE TABLE sales.b (x int)")
    conn.execute("CREATE TABLE public.c (id int PRIMARY KEY)")
    result = create_publication(conn, "p", schemas=["sales"], tables=specs("c"))
    assert published(conn, "p") == [("public", "c"), ("sales", "a"), ("sales", "b")]
    assert warned_tables(result.warnings) == ["sales.b"]


@pytest.mark.pg_max(14)
@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"tables": [TableSpec(None, "t", ("id",))]}, "column lists"),
        ({"tables": [TableSpec(None, "t", None, "id > 1")]}, "row filters"),
        ({"schemas": ["public"]}, "--tables-in-schema"),
    ],
)
def test_filters_need_postgresql_15(conn: Conn, kwargs: dict[str, Any], needle: str) -> None:
    conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
    with pytest.raises(FeatureNotSupported) as caught:
        create_publication(conn, "p", **kwargs)
    assert needle in caught.value.message and "PostgreSQL 15" in caught.value.message
    assert publication_row(conn, "p") is None


def test_wal_level_must_be_logical(make_cluster: ClusterFactory) -> None:
    replica = make_cluster(settings={"wal_level": "replica"})
    replica.sql("CREATE TABLE t (id int PRIMARY KEY)")
    with connect(replica.dsn()) as conn, pytest.raises(WalLevelNotLogical) as caught:
        create_publication(conn, "p", tables=specs("t"))
    assert "wal_level = replica" in caught.value.message
    assert caught.value.hint == (
        "set wal_level = logical in postgresql.conf on the publisher and restart it"
    )
    assert replica.sql("SELECT count(*) FROM pg_publication") == [(0,)]


def test_duplicate_name(conn: Conn) -> None:
    conn.execute("CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE u (id int PRIMARY KEY)")
    create_publication(conn, "p", tables=specs("t"))
    with pytest.raises(PublicationAlreadyExists) as caught:
        create_publication(conn, "p", tables=specs("u"))
    assert caught.value.message == "publication 'p' already exists"
    assert published(conn, "p") == [("public", "t")]


def test_missing_tables_are_all_named(conn: Conn) -> None:
    conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
    with pytest.raises(TableNotFound) as caught:
        create_publication(conn, "p", tables=specs("t", "ghost", '"No"."Such"', "T2"))
    assert caught.value.message == ('tables do not exist on the publisher: ghost, "No"."Such", t2')
    assert publication_row(conn, "p") is None


@pytest.mark.pg_min(15)
def test_missing_schema(conn: Conn) -> None:
    with pytest.raises(SchemaNotFound, match="schema not found on the publisher: nowhere"):
        create_publication(conn, "p", schemas=["nowhere"])


def test_only_tables_can_be_published(conn: Conn) -> None:
    conn.execute("CREATE TABLE t (id int PRIMARY KEY); CREATE VIEW v AS SELECT * FROM t")
    with pytest.raises(InterfaceError, match=r"public\.v is a view; only tables can be published"):
        create_publication(conn, "p", tables=specs("v"))


def test_nothing_to_publish(conn: Conn) -> None:
    with pytest.raises(InterfaceError, match="nothing to publish"):
        create_publication(conn, "p")
    with pytest.raises(InterfaceError, match="cannot be combined"):
        create_publication(conn, "p", all_tables=True, tables=specs("t"))


def test_server_refusal_is_one_clean_error(conn: Conn) -> None:
    conn.execute("CREATE TABLE t (id int PRIMARY KEY); CREATE UNLOGGED TABLE u (id int)")
    with pytest.raises(ServerError) as caught:
        create_publication(conn, "p", tables=specs("t", "u"))
    # PostgreSQL's message (wording varies by major) and its detail, on one line.
    message = caught.value.message
    assert message.startswith("cannot create the publication: ") and '"u"' in message
    assert "unlogged" in message and "\n" not in message
    assert caught.value.sqlstate is not None
    assert publication_row(conn, "p") is None


def test_all_tables_warns(conn: Conn) -> None:
    conn.execute("CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE nopk (x int)")
    result = create_publication(conn, "everything", all_tables=True)
    assert result.warnings[0] == (
        "publication 'everything' is FOR ALL TABLES: every table created in this "
        "database from now on is replicated too"
    )
    assert warned_tables(result.warnings) == ["public.nopk"]
    assert publication_row(conn, "everything") == (True, True, True, True, False, True)


# -- replica identity ---------------------------------------------------------------------

IDENTITY_TABLES = """
    CREATE TABLE pk (id int PRIMARY KEY, a int);
    CREATE TABLE nopk (id int, a int);
    CREATE TABLE nothing (id int PRIMARY KEY, a int);
    ALTER TABLE nothing REPLICA IDENTITY NOTHING;
    CREATE TABLE full_t (id int, a int);
    ALTER TABLE full_t REPLICA IDENTITY FULL;
    CREATE TABLE by_index (id int NOT NULL, a int);
    CREATE UNIQUE INDEX by_index_id ON by_index (id);
    ALTER TABLE by_index REPLICA IDENTITY USING INDEX by_index_id;
    CREATE TABLE unique_only (id int NOT NULL UNIQUE, a int);
    CREATE TABLE deferrable_pk (id int PRIMARY KEY DEFERRABLE, a int);
"""
ALL = ("pk", "nopk", "nothing", "full_t", "by_index", "unique_only", "deferrable_pk")


def _fails(conn: Conn, statement: str) -> str | None:
    """PostgreSQL's error for ``statement`` (rolled back), or None if it works."""
    try:
        with conn.transaction(force_rollback=True):
            conn.execute(statement)
    except psycopg.Error as exc:
        return str(exc.diag.message_primary)
    return None


def test_identity_warnings(conn: Conn) -> None:
    conn.execute(IDENTITY_TABLES)
    result = create_publication(conn, "p", tables=specs(*ALL))
    assert warned_tables(result.warnings) == [
        "public.deferrable_pk",
        "public.nopk",
        "public.nothing",
        "public.unique_only",
    ]
    by_table = dict(zip(warned_tables(result.warnings), result.warnings, strict=True))
    nothing = by_table["public.nothing"]
    assert "REPLICA IDENTITY NOTHING" in nothing
    assert "UPDATE and DELETE on it will fail on the publisher" in nothing
    assert "ALTER TABLE public.nothing REPLICA IDENTITY" in nothing
    nopk = by_table["public.nopk"]
    assert "has no primary key (REPLICA IDENTITY DEFAULT)" in nopk
    assert "add a primary key, or ALTER TABLE public.nopk REPLICA IDENTITY FULL" in nopk
    assert "USING INDEX" in nopk
    assert "deferrable or invalid primary key" in by_table["public.deferrable_pk"]
    assert all("\n" not in w for w in result.warnings)


def test_warnings_match_what_postgresql_does(conn: Conn) -> None:
    """The seeds' rule, checked on the server itself: UPDATE and DELETE on a table
    without a usable replica identity fail on the publisher once it is in a
    publication that publishes them, and exactly those tables are warned about."""
    conn.execute(IDENTITY_TABLES)
    for table in ALL:
        conn.execute(f"INSERT INTO {table} VALUES (1, 1)")
    result = create_publication(conn, "p", tables=specs(*ALL))
    warned = {t.removeprefix("public.") for t in warned_tables(result.warnings)}
    for table in ALL:
        update_error = _fails(conn, f"UPDATE {table} SET a = 2")
        delete_error = _fails(conn, f"DELETE FROM {table}")
        assert (update_error is not None) == (table in warned), (table, update_error)
        assert (delete_error is not None) == (table in warned), (table, delete_error)
    assert _fails(conn, "UPDATE nopk SET a = 2") == (
        'cannot update table "nopk" because it does not have a replica identity '
        "and publishes updates"
    )
    assert _fails(conn, "DELETE FROM nothing") == (
        'cannot delete from table "nothing" because it does not have a replica identity '
        "and publishes deletes"
    )
    # INSERT never needs a replica identity.
    assert _fails(conn, "INSERT INTO nopk VALUES (2, 2)") is None


def test_warnings_stay_on_one_line(conn: Conn) -> None:
    conn.execute('CREATE TABLE "two\nlines" (x int)')
    (warning,) = create_publication(conn, "p", tables=specs('"two\nlines"')).warnings
    assert warning.startswith('table public."two\\nlines" has no primary key')
    assert "\n" not in warning


def test_update_fails_with_postgresql_error(conn: Conn) -> None:
    conn.execute("CREATE TABLE nopk (id int, a int); INSERT INTO nopk VALUES (1, 1)")
    create_publication(conn, "p", tables=specs("nopk"))
    with pytest.raises(pg_errors.ObjectNotInPrerequisiteState) as caught:
        conn.execute("UPDATE nopk SET a = 2")
    assert caught.value.diag.message_primary == (
        'cannot update table "nopk" because it does not have a replica identity '
        "and publishes updates"
    )
    assert caught.value.diag.message_hint == (
        "To enable updating the table, set REPLICA IDENTITY using ALTER TABLE."
    )


def test_insert_only_publication_gives_no_warning(conn: Conn) -> None:
    conn.execute(IDENTITY_TABLES)
    for table in ALL:
        conn.execute(f"INSERT INTO {table} VALUES (1, 1)")
    result = create_publication(
        conn, "p", tables=specs(*ALL), options=PublicationOptions(("insert", "truncate"))
    )
    assert result.warnings == ()
    assert all(_fails(conn, f"UPDATE {t} SET a = 2") is None for t in ALL)


def test_delete_only_warning_names_delete(conn: Conn) -> None:
    conn.execute("CREATE TABLE nopk (id int, a int)")
    result = create_publication(
        conn, "p", tables=specs("nopk"), options=PublicationOptions(("insert", "delete"))
    )
    (warning,) = result.warnings
    assert "so DELETE on it will fail on the publisher while publication 'p' publishes it" in (
        warning
    )
    assert "UPDATE" not in warning
    assert _fails(conn, "UPDATE nopk SET a = 1") is None
    assert _fails(conn, "DELETE FROM nopk") is not None


def test_dropped_identity_index(conn: Conn) -> None:
    conn.execute(IDENTITY_TABLES)
    conn.execute("DROP INDEX by_index_id")
    result = create_publication(conn, "p", tables=specs("by_index"))
    (warning,) = result.warnings
    assert "REPLICA IDENTITY USING INDEX but that index is gone or unusable" in warning
    assert _fails(conn, "UPDATE by_index SET a = 1") is not None


def test_partitioned_table_checked_through_its_partitions(conn: Conn) -> None:
    conn.execute(
        """
        CREATE TABLE parted (id int, a int) PARTITION BY RANGE (id);
        CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (10);
        CREATE TABLE parted_2 PARTITION OF parted FOR VALUES FROM (10) TO (20);
        ALTER TABLE parted_2 REPLICA IDENTITY FULL;
        CREATE TABLE keyed (id int PRIMARY KEY, a int) PARTITION BY RANGE (id);
        CREATE TABLE keyed_1 PARTITION OF keyed FOR VALUES FROM (0) TO (10);
        INSERT INTO parted VALUES (1, 1), (11, 1);
        """
    )
    for via_root in (False, True):
        name = f"p_{via_root}"
        result = create_publication(
            conn, name, tables=specs("parted", "keyed"), options=PublicationOptions(None, via_root)
        )
        assert warned_tables(result.warnings) == ["public.parted_1"], via_root
    assert _fails(conn, "UPDATE parted SET a = 2 WHERE id = 1") is not None
    assert _fails(conn, "UPDATE parted SET a = 2 WHERE id = 11") is None


@pytest.mark.pg_min(15)
@pytest.mark.parametrize(
    ("table_sql", "spec", "warning"),
    [
        ("CREATE TABLE t (id int PRIMARY KEY, a int)", "t WHERE (id > 0)", None),
        (
            "CREATE TABLE t (id int PRIMARY KEY, a int)",
            "t WHERE (a > 0 AND id > 0)",
            "has a row filter on column(s) a outside its replica identity",
        ),
        (
            "CREATE TABLE t (id int, a int); ALTER TABLE t REPLICA IDENTITY FULL",
            "t WHERE (a > 0)",
            None,
        ),
        ("CREATE TABLE t (id int PRIMARY KEY, a int)", "t (id, a)", None),
        (
            "CREATE TABLE t (id int PRIMARY KEY, a int)",
            "t (a)",
            "has a column list without its replica identity column(s) id",
        ),
        (
            "CREATE TABLE t (id int, a int); ALTER TABLE t REPLICA IDENTITY FULL",
            "t (id, a)",
            "has a column list but REPLICA IDENTITY FULL",
        ),
        (
            "CREATE TABLE t (id int NOT NULL, a int); CREATE UNIQUE INDEX t_i ON t (id);"
            " ALTER TABLE t REPLICA IDENTITY USING INDEX t_i",
            "t (id) WHERE (id < 5)",
            None,
        ),
        (
            "CREATE TABLE t (id int, a int)",
            "t WHERE (a > 0)",  # the filter's problem and the missing key, both
            "has a row filter on column(s) a outside its replica identity",
        ),
    ],
)
def test_row_filter_and_column_list_rules(
    conn: Conn, table_sql: str, spec: str, warning: str | None
) -> None:
    conn.execute(table_sql)
    conn.execute("INSERT INTO t VALUES (1, 1)")
    result = create_publication(conn, "p", tables=specs(spec))
    update_error = _fails(conn, "UPDATE t SET a = 2")
    if warning is None:
        assert result.warnings == ()
        assert update_error is None
    else:
        assert warning in result.warnings[0]
        assert update_error is not None and update_error.startswith('cannot update table "t"')


@pytest.mark.pg_min(15)
def test_row_filter_of_the_root_applies_via_root(conn: Conn) -> None:
    conn.execute(
        """
        CREATE TABLE parted (id int, a int, PRIMARY KEY (id)) PARTITION BY RANGE (id);
        CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (10);
        INSERT INTO parted VALUES (1, 1);
        """
    )
    result = create_publication(
        conn,
        "p",
        tables=specs("parted WHERE (a > 0)"),
        options=PublicationOptions(None, True),
    )
    assert warned_tables(result.warnings) == ["public.parted_1"]
    assert _fails(conn, "UPDATE parted SET a = 2") == 'cannot update table "parted_1"'


def test_identity_issues_of_a_missing_publication(conn: Conn) -> None:
    assert identity_issues(conn, "ghost") == []


# -- alter --------------------------------------------------------------------------------


def test_alter_add_drop_set(conn: Conn) -> None:
    conn.execute(
        "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY);"
        ' CREATE TABLE "C d" (id int PRIMARY KEY); CREATE TABLE nopk (x int)'
    )
    create_publication(conn, "p", tables=specs("a", "nopk"))
    result = alter_publication(conn, "p", add=specs("b", '"C d"'), drop=specs("nopk"))
    assert result.warnings == ()  # nopk was warned about at creation, and is gone now
    assert published(conn, "p") == [("public", "C d"), ("public", "a"), ("public", "b")]
    alter_publication(conn, "p", set_tables=specs("b"))
    assert published(conn, "p") == [("public", "b")]


def test_alter_warns_about_new_tables_only(conn: Conn) -> None:
    conn.execute(
        "CREATE TABLE old_nopk (x int); CREATE TABLE new_nopk (x int);"
        " CREATE TABLE pk (id int PRIMARY KEY)"
    )
    created = create_publication(conn, "p", tables=specs("old_nopk"))
    assert warned_tables(created.warnings) == ["public.old_nopk"]
    assert alter_publication(conn, "p", add=specs("pk")).warnings == ()
    added = alter_publication(conn, "p", add=specs("new_nopk"))
    assert warned_tables(added.warnings) == ["public.new_nopk"]
    replaced = alter_publication(conn, "p", set_tables=specs("old_nopk", "pk"))
    assert warned_tables(replaced.warnings) == ["public.old_nopk"]


def test_alter_options_recheck_every_table(conn: Conn) -> None:
    conn.execute("CREATE TABLE nopk (x int); CREATE TABLE pk (id int PRIMARY KEY)")
    created = create_publication(
        conn, "p", tables=specs("nopk", "pk"), options=PublicationOptions(("insert",))
    )
    assert created.warnings == ()
    result = alter_publication(conn, "p", options=PublicationOptions(("insert", "update")))
    assert warned_tables(result.warnings) == ["public.nopk"]
    assert "so UPDATE on it" in result.warnings[0]
    assert publication_row(conn, "p") == (True, True, False, False, False, False)


@pytest.mark.pg_min(15)
def test_alter_set_table_with_filter(conn: Conn) -> None:
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, a int, b int)")
    create_publication(conn, "p", tables=specs("t"))
    result = alter_publication(conn, "p", set_tables=specs("t (id, a) WHERE (id > 10)"))
    assert result.warnings == ()
    assert filters(conn, "p") == [("t", ["id", "a"], "(id > 10)")]


def test_alter_is_atomic(conn: Conn) -> None:
    conn.execute("CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY)")
    create_publication(conn, "p", tables=specs("a"))
    # The options would apply, but adding a table already in the publication fails.
    with pytest.raises(ServerError) as caught:
        alter_publication(conn, "p", add=specs("b", "a"), options=PublicationOptions(("insert",)))
    assert caught.value.message.startswith("cannot alter the publication: ")
    assert "already member of publication" in caught.value.message
    assert publication_row(conn, "p") == (True, True, True, True, False, False)
    assert published(conn, "p") == [("public", "a")]


def test_alter_missing_publication(conn: Conn) -> None:
    conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
    with pytest.raises(PublicationNotFound) as caught:
        alter_publication(conn, "ghost", add=specs("t"))
    assert caught.value.message == "publication 'ghost' does not exist"
    assert caught.value.hint is not None and "publication list" in caught.value.hint


def test_alter_missing_table(conn: Conn) -> None:
    conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
    create_publication(conn, "p", tables=specs("t"))
    with pytest.raises(TableNotFound, match="table does not exist on the publisher: ghost"):
        alter_publication(conn, "p", add=specs("ghost"))
    with pytest.raises(TableNotFound, match="ghost"):
        alter_publication(conn, "p", drop=specs("ghost"))
    assert published(conn, "p") == [("public", "t")]


def test_alter_refusals(conn: Conn) -> None:
    conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
    create_publication(conn, "everything", all_tables=True)
    with pytest.raises(ServerError) as caught:
        alter_publication(conn, "everything", add=specs("t"))
    assert 'publication "everything" is defined as FOR ALL TABLES' in caught.value.message
    with pytest.raises(InterfaceError, match="nothing to change"):
        alter_publication(conn, "everything")
    with pytest.raises(InterfaceError, match="--set-table replaces"):
        alter_publication(conn, "everything", set_tables=specs("t"), add=specs("t"))


# -- drop -----------------------------------------------------------------------------


def test_drop(conn: Conn) -> None:
    conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
    create_publication(conn, 'we ird"."pub', tables=specs("t"))
    assert drop_publication(conn, 'we ird"."pub') is True
    assert publication_row(conn, 'we ird"."pub') is None
    with pytest.raises(PublicationNotFound, match="publication 'we ird\"\\.\"pub' does not"):
        drop_publication(conn, 'we ird"."pub')
    assert drop_publication(conn, 'we ird"."pub', if_exists=True) is False


def test_names_postgresql_would_truncate(conn: Conn) -> None:
    with pytest.raises(InterfaceError, match="longer than 63 bytes"):
        drop_publication(conn, "p" * 64)


def test_needs_autocommit(cluster: Cluster, dbname: str) -> None:
    with (
        cluster.connect(dbname, autocommit=False) as conn,
        pytest.raises(InterfaceError, match="autocommit"),
    ):
        drop_publication(conn, "p")


# -- list -----------------------------------------------------------------------------


def test_list(conn: Conn, cluster: Cluster) -> None:
    conn.execute(
        'CREATE SCHEMA "we ird"; CREATE TABLE "we ird"."x[y]" (id int PRIMARY KEY, a int);'
        " CREATE TABLE t (id int PRIMARY KEY, a int)"
    )
    assert list_publications(conn) == []
    create_publication(
        conn, "b", tables=specs('"we ird"."x[y]"', "t"), options=PublicationOptions(("insert",))
    )
    create_publication(conn, "a", all_tables=True)
    infos = list_publications(conn)
    assert [p.name for p in infos] == ["a", "b"]
    a, b = infos
    assert a == PublicationInfo(
        "a",
        "postgres",
        True,
        ("insert", "update", "delete", "truncate"),
        False,
        (),
        (PublishedTable("public", "t"), PublishedTable("we ird", "x[y]")),
    )
    assert (b.all_tables, b.publish, b.via_root) == (False, ("insert",), False)
    assert b.tables == (PublishedTable("public", "t"), PublishedTable("we ird", "x[y]"))
    assert b.to_json() == {
        "name": "b",
        "owner": "postgres",
        "all_tables": False,
        "publish": ["insert"],
        "via_root": False,
        "ddl": False,
        "schemas": [],
        "tables": [
            {"schema": "public", "table": "t", "columns": None, "row_filter": None},
            {"schema": "we ird", "table": "x[y]", "columns": None, "row_filter": None},
        ],
    }


@pytest.mark.pg_min(15)
def test_list_column_lists_row_filters_and_schemas(conn: Conn) -> None:
    conn.execute(
        "CREATE SCHEMA s; CREATE TABLE s.a (id int PRIMARY KEY);"
        " CREATE TABLE t (id int PRIMARY KEY, a int, b int);"
        " CREATE TABLE u (id int PRIMARY KEY, a int)"
    )
    create_publication(conn, "p", tables=specs("t (id, b) WHERE (id > 1 AND b < 3)", "u"))
    create_publication(conn, "q", schemas=["s"], options=PublicationOptions(None, True))
    p, q = list_publications(conn)
    assert p.tables == (
        PublishedTable("public", "t", ("id", "b"), "((id > 1) AND (b < 3))"),
        PublishedTable("public", "u"),  # no column list: null, not every column
    )
    assert str(p.tables[0].spec) == "public.t (id, b) WHERE ((id > 1) AND (b < 3))"
    assert (q.schemas, q.via_root, q.tables) == (("s",), True, (PublishedTable("s", "a"),))


@pytest.mark.pg_max(14)
def test_list_before_15(conn: Conn) -> None:
    conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
    create_publication(conn, "p", tables=specs("t"))
    (info,) = list_publications(conn)
    assert info.tables == (PublishedTable("public", "t", None, None),)
    assert info.schemas == ()
