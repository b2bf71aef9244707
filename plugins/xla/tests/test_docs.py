"""The docs' XLA examples run: every ``python notest`` block of docs/xla.md and of this plugin's
README whose first line is a ``# $ VAR=value ... python train.py`` command.

Those blocks cannot run where the docs stage runs them (the project's env has no torch_xla), so
they are tagged ``notest`` there and run here, with the command's environment: in this process
when it asks for nothing beyond ``PJRT_DEVICE=CPU`` (the test env), else in a new one.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch_xla")

PLUGIN = Path(__file__).resolve().parents[1]
PAGES = [PLUGIN.parents[1] / "docs" / "xla.md", PLUGIN / "README.md"]
FENCE = re.compile(r"^```python notest\n# \$ (?P<command>[^\n]*)\n(?P<body>.*?)^```", re.M | re.S)


def blocks() -> list[tuple[str, dict[str, str], str]]:
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            env = dict(re.findall(r"(\w+)=(\S+)", match["command"].split("python", 1)[0]))
            line = text[: match.start()].count("\n") + 1
            found.append((f"{page.name}:{line}", env, match["body"]))
    return found


BLOCKS = blocks()


def test_the_pages_have_runnable_xla_examples() -> None:
    assert len([b for b in BLOCKS if b[0].startswith("xla.md")]) >= 4


@pytest.mark.parametrize(("where", "env", "code"), BLOCKS, ids=[b[0] for b in BLOCKS])
def test_example_runs(
    where: str, env: dict[str, str], code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    if env == {"PJRT_DEVICE": "CPU"}:
        exec(compile(code, where, "exec"), {"__name__": "__main__"})
        return
    script = tmp_path / "train.py"
    script.write_text(code, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, str(script)], env={**os.environ, **env}, capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, f"{where}:\n{proc.stdout}{proc.stderr}"
