"""The pytest plugin, exercised through inner pytest runs (pytester)."""

from __future__ import annotations

import pytest

from pgferry.testing import find_install
from pgferry.testing.pytest_plugin import parse_majors

CONFTEST = 'pytest_plugins = ["pgferry.testing.pytest_plugin"]\n'


def test_parse_majors() -> None:
    assert parse_majors("18, 15,18") == [18, 15]
    with pytest.raises(pytest.UsageError):
        parse_majors("18,latest")
    with pytest.raises(pytest.UsageError):
        parse_majors(" , ")


def test_env_selects_majors_and_ids(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        """
        import pytest

        def test_a(pg_install):
            pass

        @pytest.mark.pg_min(16)
        def test_new(pg_install):
            pass

        def test_plain():
            pass
        """
    )
    monkeypatch.setenv("PGFERRY_TEST_PG", "15,16")
    result = pytester.runpytest("--collect-only", "-q")
    result.stdout.fnmatch_lines(
        [
            # Grouped by major: one major's session clusters at a time.
            "*test_a[[]pg15[]]",
            "*test_new[[]pg15[]]",
            "*test_a[[]pg16[]]",
            "*test_new[[]pg16[]]",
            "*test_plain",
        ]
    )
    # --pg beats the environment.
    result = pytester.runpytest("--collect-only", "-q", "--pg=13")
    result.stdout.fnmatch_lines(["*test_a[[]pg13[]]", "*3 tests collected*"])


def test_fixtures_markers_and_failure_log(pytester: pytest.Pytester) -> None:
    # The plugin does not depend on the major: one inner run is enough.
    pg_install = find_install()
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        """
        import pytest

        seen = {}

        def test_dbname(cluster, dbname):
            seen["db"] = dbname
            seen["cluster"] = cluster
            assert cluster.sql("SELECT current_database()", dbname=dbname) == [(dbname,)]
            cluster.sql("SELECT pg_create_logical_replication_slot('s1', 'pgoutput')",
                        dbname=dbname)

        def test_dbname_was_dropped(cluster):
            assert cluster is seen["cluster"]  # one shared cluster per major
            assert cluster.sql("SELECT 1 FROM pg_database WHERE datname = %s",
                               (seen["db"],)) == []
            assert cluster.sql("SELECT slot_name FROM pg_replication_slots") == []

        def test_make_cluster(make_cluster, cluster):
            other = make_cluster(settings={"max_wal_senders": "5"})
            assert other.port != cluster.port
            assert other.sql("SHOW max_wal_senders") == [("5",)]
            seen["other"] = other.path

        def test_made_cluster_destroyed():
            assert not seen["other"].exists()

        @pytest.mark.pg_max(12)
        def test_too_new(pg_install):
            raise AssertionError("must be skipped")

        def test_fails(cluster):
            cluster.sql("SELECT 1")
            cluster.sql("SELECT pgferry_no_such_function_4711()")
        """
    )
    result = pytester.runpytest(f"--pg={pg_install.major}", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4, skipped=1, failed=1)
    output = result.stdout.str()
    assert f"pgferry server log: PostgreSQL {pg_install.version}" in output
    assert "function pgferry_no_such_function_4711() does not exist" in output
    # Only this test's lines: the slot created by an earlier test is not there.
    section = output.split("pgferry server log", 1)[1]
    assert "pg_create_logical_replication_slot" not in section
