"""``loopkit plugins``: the installed console script, with and without the fixture plugins."""

from __future__ import annotations

import importlib.metadata as metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
import plugin_fixtures

from loopkit.cli import build_parser, main

SCRIPT = Path(sys.executable).with_name("loopkit")


@pytest.fixture(scope="session")
def fixture_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return plugin_fixtures.install(tmp_path_factory.getbasetemp() / "plugin-fixtures")


def _loopkit(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "loopkit.cli"]
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, check=False, env=env or dict(os.environ)
    )


def _rows(stdout: str) -> dict[tuple[str, str], list[str]]:
    """(name, distribution) -> the row's cells; the last cell is the load status."""
    lines = stdout.strip().splitlines()
    assert lines[0].split() == ["name", "kind", "distribution", "version", "loads"]
    rows = {}
    for line in lines[1:]:
        cells = line.split(maxsplit=4)
        rows[(cells[0], cells[2])] = cells
    return rows


def test_the_console_script_is_installed():
    assert SCRIPT.exists(), f"{SCRIPT} missing: is loopkit installed in this environment?"


def test_loopkit_plugins_lists_the_core_defaults():
    done = _loopkit("plugins")
    rows = _rows(done.stdout)
    version = metadata.version("loopkit")
    for name, kind in [
        ("32-true", "precision"),
        ("single_device", "strategy"),
        ("cpu", "accelerator"),
        ("cuda", "accelerator"),
        ("mps", "accelerator"),
    ]:
        assert rows[(name, "loopkit")] == [name, kind, "loopkit", version, "ok"]
    # Nothing from the test fixtures leaks into the real environment.
    assert "fixture" not in done.stdout
    all_ok = all(cells[4] == "ok" for cells in rows.values())
    assert done.returncode == (0 if all_ok else 1), done.stderr


def test_loopkit_plugins_reports_broken_and_conflicting_plugins(fixture_site):
    done = _loopkit("plugins", env=plugin_fixtures.env_with(fixture_site))
    assert done.returncode == 1
    rows = _rows(done.stdout)
    assert rows[("fixture-sub", "loopkit-fixture-good")] == [
        "fixture-sub", "subscriber", "loopkit-fixture-good", "1.0.0", "ok",
    ]  # fmt: skip
    assert rows[("fixture-logger", "loopkit-fixture-good")][1] == "logger"
    broken = rows[("fixture-broken", "loopkit-fixture-broken")]
    assert broken[4].startswith("error: ModuleNotFoundError")
    assert "loopkit_fixture_missing_dependency" in broken[4]
    assert rows[("fixture-not-a-plugin", "loopkit-fixture-broken")][4].startswith(
        "error: PluginLoadError"
    )
    for dist in ("loopkit-fixture-dup-a", "loopkit-fixture-dup-b"):
        status = rows[("fixture-dup", dist)][4]
        assert "PluginConflictError" in status
        assert "loopkit-fixture-dup-a" in status and "loopkit-fixture-dup-b" in status
    # The broken ones do not stop the core defaults from loading.
    assert rows[("32-true", "loopkit")][4] == "ok"


def test_loopkit_plugins_kind_filter(capsys):
    assert main(["plugins", "--kind", "accelerator"]) in (0, 1)
    rows = _rows(capsys.readouterr().out)
    assert {cells[1] for cells in rows.values()} == {"accelerator"}
    assert {("cpu", "loopkit"), ("cuda", "loopkit"), ("mps", "loopkit")} <= set(rows)
    assert main(["plugins", "--kind", "precisions"]) == 2
    assert "unknown kind 'precisions'" in capsys.readouterr().err


def test_the_parser_requires_a_command(capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([])
    assert info.value.code == 2
    assert "COMMAND" in capsys.readouterr().err
