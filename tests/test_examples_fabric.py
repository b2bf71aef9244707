"""The Fabric examples run, and train exactly what the same loops in plain PyTorch train."""

from __future__ import annotations

import os
import runpy
import typing as t
from pathlib import Path

import pytest
import torch
from torch import nn

from loopkit import Fabric

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "fabric"


@pytest.fixture(autouse=True)
def _seed_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # seed_everything records the seed in the environment; keep it out of other tests.
    for key in ("LOOPKIT_GLOBAL_SEED", "LOOPKIT_SEED_WORKERS"):
        monkeypatch.setenv(key, os.environ.get(key, ""))
        monkeypatch.delenv(key)


def _load(name: str) -> dict[str, t.Any]:
    return runpy.run_path(str(EXAMPLES / name))


def _equal(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def _fabric() -> Fabric:
    return Fabric(accelerator="cpu")


@pytest.mark.parametrize("name", ["multiple_models.py", "custom_hooks.py"])
def test_example_runs_as_a_script(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    out = capsys.readouterr().out
    assert out.strip()
    assert "nan" not in out


# -- multiple_models.py ------------------------------------------------------------------------


def _plain_start(ns: dict[str, t.Any]) -> None:
    torch.manual_seed(ns["SEED"])


def test_one_model_one_optimizer_equals_plain_pytorch() -> None:
    ns = _load("multiple_models.py")
    trained = ns["train_one_model_one_optimizer"](_fabric())

    _plain_start(ns)
    model = ns["LitModel"]()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _, (x, y) in zip(range(ns["STEPS"]), ns["make_loader"]()):
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    _equal(trained, model)


def test_one_model_two_optimizers_equals_plain_pytorch() -> None:
    ns = _load("multiple_models.py")
    trained = ns["train_one_model_two_optimizers"](_fabric())

    _plain_start(ns)
    model = ns["LitModel"]()
    opt1 = torch.optim.SGD(model.layer1.parameters(), lr=0.003)
    opt2 = torch.optim.SGD(model.layer2.parameters(), lr=0.01)
    for _, (x, y) in zip(range(ns["STEPS"]), ns["make_loader"]()):
        loss = nn.functional.mse_loss(model(x), y)
        opt1.zero_grad()
        opt2.zero_grad()
        loss.backward()
        opt1.step()
        opt2.step()
    _equal(trained, model)
    fresh = (torch.manual_seed(ns["SEED"]), ns["LitModel"]())[1]
    assert not torch.equal(fresh.layer1.weight, model.layer1.weight)  # both layers trained
    assert not torch.equal(fresh.layer2.weight, model.layer2.weight)


def test_two_models_one_optimizer_equals_plain_pytorch() -> None:
    ns = _load("multiple_models.py")
    trained = ns["train_two_models_one_optimizer"](_fabric())

    _plain_start(ns)
    model = ns["AutoEncoder"]()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _, (x, _y) in zip(range(ns["STEPS"]), ns["make_loader"]()):
        loss = nn.functional.mse_loss(model(x), x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    _equal(trained, model)


def test_gan_equals_plain_pytorch() -> None:
    ns = _load("multiple_models.py")
    generator, discriminator = ns["train_gan"](_fabric())

    _plain_start(ns)
    gen, dis = ns["Generator"](), ns["Discriminator"]()
    opt_g = torch.optim.SGD(gen.parameters(), lr=0.01)
    opt_d = torch.optim.SGD(dis.parameters(), lr=0.001)
    bce = nn.functional.binary_cross_entropy_with_logits
    for _, (real, _y) in zip(range(ns["STEPS"]), ns["make_loader"]()):
        fake = gen(torch.randn(real.shape[0], gen.latent))
        ones, zeros = torch.ones(real.shape[0], 1), torch.zeros(real.shape[0], 1)
        d_loss = bce(dis(real), ones) + bce(dis(fake.detach()), zeros)
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
        g_loss = bce(dis(fake), ones)
        opt_g.zero_grad()
        g_loss.backward()
        opt_g.step()
    _equal(generator, gen)
    _equal(discriminator, dis)


# -- custom_hooks.py ---------------------------------------------------------------------------


def test_call_example_runs_only_the_callbacks_that_define_the_hook() -> None:
    ns = _load("custom_hooks.py")
    callback = ns["call_example"]()
    assert callback.seen == [("on_train_start", None), ("on_train_epoch_end", {"loss": 0.25})]


def test_callback_driven_loop_equals_plain_pytorch() -> None:
    ns = _load("custom_hooks.py")
    run = ns["train"](max_epochs=12, threshold=0.05, max_norm=0.5)

    torch.manual_seed(ns["SEED"])
    model = ns["Regressor"]()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    losses, norms = [], []
    epochs = 0
    for epoch in range(12):
        total = 0.0
        batches = 0
        for x, y in ns["make_loader"]():
            loss = nn.functional.mse_loss(model(x), y)
            losses.append(loss.item())
            optimizer.zero_grad()
            loss.backward()
            norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 0.5)))
            optimizer.step()
            total, batches = total + loss.item(), batches + 1
        for group in optimizer.param_groups:
            group["lr"] *= 0.8
        epochs = epoch + 1
        if total / batches < 0.05:
            break

    assert 1 < epochs < 12  # the early stop happened, and not at once
    assert run.epochs == epochs
    assert run.stopping.stopped_at == epochs - 1
    assert run.model.epochs_seen == epochs  # the module's own hook ran each epoch
    assert run.history.losses == losses
    assert run.clipping.norms == norms
    assert max(norms) > 0.5  # clipping had something to do
    _equal(run.model, model)
