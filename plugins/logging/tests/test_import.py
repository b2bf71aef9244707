"""Importing the plugin, or loading its entry points, imports no heavy library."""

from __future__ import annotations

from pathlib import Path

from conftest import run_script

CODE = """
import sys
import loopkit_logging
from loopkit.plugins import registry
for name in ("tensorboard", "csv", "progress_bar"):
    registry().load(name)
logger = registry().create("logger", "csv")
heavy = ("torch", "tensorboard", "tqdm", "torch.utils.tensorboard")
print(sorted(m for m in heavy if m in sys.modules))
"""


def test_loading_the_plugins_imports_neither_torch_nor_tensorboard_nor_tqdm(
    tmp_path: Path,
) -> None:
    proc = run_script(CODE, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
