"""The switchover's pieces that need no server: the PgBouncer ini rewrite and
the reverse subscription's default name."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

import pgferry.switchover as package
from pgferry.conninfo import parse
from pgferry.switchover.fence import FenceFailed, rewrite_ini
from pgferry.switchover.reverse import default_name
from pgferry.switchover.watchdog import quote_alias

INI = """\
[databases]
other = host=/tmp port=5432 dbname=other
app = host=/tmp port=5432 dbname=app
"we ird" = host=/tmp port=5432 dbname=x

[pgbouncer]
listen_port = 6432
"""


def test_the_database_line_is_replaced_and_the_rest_kept(tmp_path: Path) -> None:
    ini = tmp_path / "pgbouncer.ini"
    ini.write_text(INI)
    ini.chmod(0o640)
    old = rewrite_ini(ini, "app", "host=db2 port=5433 dbname=app password='it\\'s here'")
    assert old == "app = host=/tmp port=5432 dbname=app"
    text = ini.read_text()
    assert "other = host=/tmp port=5432 dbname=other" in text
    assert "listen_port = 6432" in text
    line = next(x for x in text.splitlines() if x.startswith("app ="))
    # The conninfo as libpq (and PgBouncer) read it back.
    assert parse(line.partition(" = ")[2]) == {
        "host": "db2", "port": "5433", "dbname": "app", "password": "it's here",
    }  # fmt: skip
    assert stat.S_IMODE(ini.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["pgbouncer.ini"]  # no temporary left


def test_a_quoted_alias_and_a_missing_one(tmp_path: Path) -> None:
    ini = tmp_path / "pgbouncer.ini"
    ini.write_text(INI)
    rewrite_ini(ini, "we ird", "host=db2 dbname=x")
    assert '"we ird" = dbname=x host=db2' in ini.read_text()
    with pytest.raises(FenceFailed, match="has no \\[databases\\] line for 'nope'"):
        rewrite_ini(ini, "nope", "host=db2")


def test_names() -> None:
    assert default_name("upgrade") == "upgrade_reverse"
    long = "é" * 40  # 80 bytes: cut on a character boundary to fit 63 bytes
    assert len(default_name(long).encode()) <= 63
    assert default_name(long).endswith("_reverse")
    assert quote_alias('a"b') == '"a""b"'


def test_the_watchdog_module_loads_without_the_rest_of_the_switchover() -> None:
    """``python -m pgferry.switchover.watchdog`` starts before every fence: its
    package's names are loaded on first use, not with it."""
    probe = (
        "import sys, pgferry.switchover.watchdog;"
        " print(sorted(m for m in sys.modules if m.startswith('pgferry.switchover')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "['pgferry.switchover', 'pgferry.switchover.watchdog']", loaded
    for name in package.__all__:
        assert getattr(package, name).__name__ == name
