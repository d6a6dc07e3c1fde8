"""The files for running pgferry for real (``docs/deploy``) are well-formed, and the
README's two set-up commands for a fresh machine are the ones the project runs.

The systemd unit goes through ``systemd-analyze verify`` when it is installed
(with ``ExecStart`` pointing at this checkout's ``pgferry``), and its keys are
checked either way; the Containerfile's instructions are parsed. No server."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "docs" / "deploy" / "pgferry@.service"
CONTAINERFILE = ROOT / "docs" / "deploy" / "Containerfile"
README = ROOT / "README.md"
#: The README's commands for a fresh machine, in order.
DEMO = "python3 -m venv .venv && .venv/bin/pip install -e '.[embedded]' && .venv/bin/pgferry demo"
CI = "bash .ci/run"


def _unit_keys(text: str) -> dict[str, dict[str, list[str]]]:
    """``[Section]`` -> key -> values, as systemd reads a unit (comments skipped)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if re.fullmatch(r"\[[A-Za-z]+\]", line):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"line {number} is not KEY=VALUE: {line!r}"
        assert re.fullmatch(r"[A-Za-z]+", key), f"line {number}: bad key {key!r}"
        current.setdefault(key, []).append(value)
    return sections


def test_unit_keys() -> None:
    text = UNIT.read_text()
    unit = _unit_keys(text)
    assert set(unit) == {"Unit", "Service", "Install"}
    service = unit["Service"]
    assert service["Restart"] == ["on-failure"]
    assert service["EnvironmentFile"] == ["/etc/pgferry/%i.env"]  # one per instance
    assert service["Environment"][0] == "PGPASSFILE=/etc/pgferry/%i.pgpass"
    (start,) = service["ExecStart"]
    assert start.split()[1:3] == ["run", "$PGFERRY_RUN_OPTIONS"]
    assert start.split()[0].endswith("/bin/pgferry")
    assert service["User"] == ["pgferry"]  # not root
    # No password: not in a key, not in the environment it sets.
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert not any(re.search(r"password\s*=|PGPASSWORD", line, re.I) for line in lines)
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    pgferry = Path(sys.executable).parent / "pgferry"
    if not pgferry.exists():
        pytest.skip("no pgferry executable next to the interpreter")
    text = UNIT.read_text().replace("/opt/pgferry/.venv/bin/pgferry", str(pgferry))
    # (The user may not exist here; systemd checks it only when it starts the unit.)
    instance = tmp_path / "pgferry@app.service"
    instance.write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(instance)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # verify also exits 0 after a key it could not parse: it warns on stderr.
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


_INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT",
    "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}  # fmt: skip


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments skipped."""
    joined = re.sub(r"\\\n", " ", text)
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        found.append((word, rest.strip()))
    return found


def test_containerfile() -> None:
    text = CONTAINERFILE.read_text()
    steps = _instructions(text)
    assert steps[0][0] == "FROM"
    assert all(word in _INSTRUCTIONS for word, _ in steps), steps
    args = dict(steps)
    assert json.loads(args["ENTRYPOINT"]) == ["pgferry"]
    assert json.loads(args["CMD"])[0] == "run"
    assert args["USER"] == "pgferry" and args["STOPSIGNAL"] == "SIGTERM"
    assert any("pip install" in rest for word, rest in steps if word == "RUN")
    assert "PGPASSFILE=/run/secrets/pgpass" in args["ENV"]
    assert not re.search(r"PGPASSWORD|password=", text, re.I)
    # The COPY takes the source tree: the build context is the repository root.
    assert (ROOT / "pyproject.toml").exists() and ("COPY", ". /src") in steps


def _shell_blocks(markdown: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```sh\n(.*?)```", markdown, re.S)]


def test_readme_keeps_exactly_two_set_up_commands() -> None:
    text = README.read_text()
    section = text.split("\n## ")[1]
    assert section.startswith("Try it"), section[:40]
    assert _shell_blocks(section) == [DEMO, CI]
    # They are the project's: the extra the demo installs, the CI entry point,
    # and the same command in the reference.
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "embedded" in extras["optional-dependencies"]
    assert "pgferry" in extras["scripts"]
    assert (ROOT / ".ci" / "run").read_text().startswith("#!/usr/bin/env bash")
    assert DEMO in (ROOT / "docs" / "reference.md").read_text()
    assert f"```sh\n{CI}\n```" in (ROOT / "docs" / "reference.md").read_text()
    # The walk-through and the deploy recipe are linked.
    assert "docs/deploy.md" in text and "docs/reference.md" in text
