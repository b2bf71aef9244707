"""Every script in examples/trainer/ and examples/bespoke_trainer.py runs as a user would run it."""

from __future__ import annotations

import importlib.util
import runpy
import typing as t
from pathlib import Path

import pytest
import torch
from _trainer_util import same_weights

ROOT = Path(__file__).resolve().parents[1] / "examples"
SCRIPTS = sorted((ROOT / "trainer").glob("*.py"))
NEEDS = {  # example -> the plugin distribution's import package it needs
    "manual_toggle_model.py": "loopkit_toggling",
    "automatic_schedulers.py": "loopkit_schedulers",
}


def test_every_reference_example_is_listed() -> None:
    names = {p.name for p in SCRIPTS}
    assert {
        "manual_minimal.py", "manual_accumulation.py", "manual_gan.py",
        "manual_lr_scheduling.py", "manual_toggle_model.py", "manual_lbfgs.py",
        "manual_own_optimizer.py", "manual_clip_gradients.py",
        "automatic_multiple_optimizers.py", "automatic_optimizer_step.py",
        "automatic_schedulers.py", "legacy_optimizer_step.py",
    } <= names  # fmt: skip


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_example_runs(script: Path, capsys: pytest.CaptureFixture[str]) -> None:
    needed = NEEDS.get(script.name)
    if needed is not None and importlib.util.find_spec(needed) is None:
        pytest.skip(f"needs {needed}")
    runpy.run_path(str(script), run_name="__main__")
    assert capsys.readouterr().out.strip()  # each example reports what it trained


def test_bespoke_trainer_fires_its_own_hooks_and_equals_a_plain_loop() -> None:
    ns: dict[str, t.Any] = runpy.run_path(str(ROOT / "bespoke_trainer.py"))
    model, history, trainer = ns["main"](max_epochs=2, k=2)
    assert history.epochs == 2
    assert len(history.d) == 16 and len(history.g) == 8
    assert trainer.progress.global_step == 16
    torch.manual_seed(0)
    ref = ns["TinyGAN"]()
    g_opt, d_opt = ref.configure_optimizers()
    for _ in range(2):
        for i, batch in enumerate(ns["make_data"]()):
            d_opt.zero_grad()
            ref.discriminator_loss(batch).backward()
            d_opt.step()
            if (i + 1) % 2 == 0:
                g_opt.zero_grad()
                ref.generator_loss(batch).backward()
                g_opt.step()
    assert same_weights(model, ref)


def test_bespoke_trainer_is_short() -> None:
    lines = (ROOT / "bespoke_trainer.py").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("class AlternatingGAN"))
    end = next(i for i, line in enumerate(lines) if line.startswith("# -- a user of it"))
    assert end - start < 150
