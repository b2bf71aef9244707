"""Every reference example in examples/trainer/ ends with the weights of a plain PyTorch loop.

Each test runs the example's ``main()`` (the documents' code on loopkit's Trainer) and then the
same computation written as a plain loop following the documents' pseudo-code, from the same
seed, and compares the final weights with ``torch.equal``.
"""

from __future__ import annotations

import runpy
import typing as t
from pathlib import Path

import pytest
import torch
from _trainer_util import same_weights

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "trainer"


def example(name: str) -> dict[str, t.Any]:
    return runpy.run_path(str(EXAMPLES / f"{name}.py"))


def fresh(ns: dict[str, t.Any], cls: str, seed: int = 0) -> t.Any:
    torch.manual_seed(seed)
    return ns[cls]()


# -- manual optimization (references 001 and 004) ---------------------------------------------


def test_manual_minimal() -> None:
    ns = example("manual_minimal")
    model = ns["main"](max_epochs=2)
    ref = fresh(ns, "MyModel")
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for _ in range(2):
        for batch in ns["make_data"]():
            opt.zero_grad()
            ref.compute_loss(batch).backward()
            opt.step()
    assert same_weights(model, ref)


@pytest.mark.parametrize("cls", ["AccumulateN", "AccumulateScaled"])
def test_manual_accumulation(cls: str) -> None:
    ns = example("manual_accumulation")
    model = ns["main"](ns[cls], max_epochs=2)
    ref = fresh(ns, cls)
    n = ns["N"]
    scale = 1 / n if cls == "AccumulateScaled" else 1
    opt = torch.optim.SGD(ref.parameters(), lr=0.05)
    for _ in range(2):
        for i, batch in enumerate(ns["make_data"]()):
            loss = ref.compute_loss(batch)
            (loss * scale if scale != 1 else loss).backward()
            if (i + 1) % n == 0:
                opt.step()
                opt.zero_grad()
    assert same_weights(model, ref)


def _manual_gan_reference(ns: dict[str, t.Any], toggle: bool) -> t.Any:
    ref = fresh(ns, "SimpleGAN")
    g_opt = torch.optim.Adam(ref.G.parameters(), lr=1e-3 if toggle else 1e-5)
    d_opt = torch.optim.Adam(ref.D.parameters(), lr=1e-3 if toggle else 1e-5)
    loader = ns["make_data"]()
    for _ in range(2):
        batches = list(loader)
        for i, (X, _) in enumerate(batches):
            n = X.shape[0]
            real, fake = torch.ones(n, 1), torch.zeros(n, 1)
            step = (i + 1) % 2 == 0 or i == len(batches) - 1 if toggle else True
            g_X = ref.G(ref._Z.sample((n,)))
            if not toggle:
                d_opt.zero_grad()
            errD = ref.criterion(ref.D(X), real) + ref.criterion(ref.D(g_X.detach()), fake)
            errD.backward()
            if step:
                d_opt.step()
                if toggle:
                    d_opt.zero_grad()
            for p in ref.D.parameters():  # toggling: the generator's step freezes D
                p.requires_grad_(not toggle)
            errG = ref.criterion(ref.D(g_X), real)
            if not toggle:
                g_opt.zero_grad()
            errG.backward()
            for p in ref.D.parameters():
                p.requires_grad_(True)
            if step:
                g_opt.step()
                if toggle:
                    g_opt.zero_grad()
    return ref


def test_manual_gan() -> None:
    ns = example("manual_gan")
    model = ns["main"](max_epochs=2)
    assert same_weights(model, _manual_gan_reference(ns, toggle=False))


def test_manual_gan_toggle_model_with_accumulation() -> None:
    pytest.importorskip("loopkit_toggling")
    ns = example("manual_toggle_model")
    model = ns["main"](max_epochs=2)
    assert same_weights(model, _manual_gan_reference(ns, toggle=True))


@pytest.mark.parametrize("cls", ["StepEveryBatch", "StepEveryBatchTwo", "StepEveryN"])
def test_manual_lr_scheduling(cls: str) -> None:
    ns = example("manual_lr_scheduling")
    model = ns["main"](ns[cls], max_epochs=4)
    ref = fresh(ns, cls)
    opts, schedulers = ref.configure_optimizers()
    batches = list(ns["make_data"]())
    for epoch in range(4):
        for i, batch in enumerate(batches):
            for opt in opts:
                opt.zero_grad()
            ref.compute_loss(batch).backward()
            for opt in opts:
                opt.step()
            if cls == "StepEveryN":
                if (i + 1) % 2 == 0:
                    schedulers[0].step()
                if i == len(batches) - 1 and (epoch + 1) % 2 == 0:
                    schedulers[0].step()
            else:
                for sch in schedulers:
                    sch.step()
    assert same_weights(model, ref)
    lrs = [o.param_groups[0]["lr"] for o in ref._as_list(model.optimizers())]
    assert lrs == [o.param_groups[0]["lr"] for o in opts]


def test_manual_lbfgs_closure() -> None:
    ns = example("manual_lbfgs")
    model = ns["main"](max_epochs=2)
    ref = fresh(ns, "LBFGSModel")
    opt = torch.optim.LBFGS(ref.parameters(), lr=0.5, max_iter=5)
    for _ in range(2):
        for batch in ns["make_data"]():

            def closure(batch: t.Any = batch) -> torch.Tensor:
                loss = ref.compute_loss(batch)
                opt.zero_grad()
                loss.backward()
                return loss

            opt.step(closure=closure)
    assert same_weights(model, ref)


def test_manual_own_optimizer() -> None:
    ns = example("manual_own_optimizer")
    model = ns["main"](max_epochs=2)
    ref = fresh(ns, "Model")
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for _ in range(2):
        for x, y in ns["make_data"]():
            opt.zero_grad()
            torch.nn.functional.mse_loss(ref.layer(x), y).backward()
            opt.step()
    assert same_weights(model, ref)


def test_manual_clip_gradients() -> None:
    ns = example("manual_clip_gradients")
    model = ns["main"](max_epochs=2)
    ref = fresh(ns, "SimpleModel")
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for _ in range(2):
        for batch in ns["make_data"]():
            loss = ref.compute_loss(batch)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(ref.parameters()), 0.5)
            opt.step()
    assert same_weights(model, ref)


# -- automatic optimization (references 001 and 002) ------------------------------------------


def test_automatic_multiple_optimizers() -> None:
    ns = example("automatic_multiple_optimizers")
    model = ns["main"](max_epochs=2)
    ref = fresh(ns, "GAN")
    opts = ref.configure_optimizers()
    for _ in range(2):
        for batch in ns["make_data"]():
            for idx, opt in enumerate(opts):
                loss = ref.training_step(batch, 0, idx)
                opt.zero_grad()
                loss.backward()
                opt.step()
    assert same_weights(model, ref)


def test_multiple_optimizers_count_each_batch_once() -> None:
    ns = example("automatic_multiple_optimizers")
    model = ns["main"](max_epochs=10, max_steps=5)
    ref = fresh(ns, "GAN")
    opts = ref.configure_optimizers()
    for i, batch in enumerate(ns["make_data"]()):
        if i == 5:  # max_steps=5 is five batches, not five optimizer steps
            break
        for idx, opt in enumerate(opts):
            loss = ref.training_step(batch, i, idx)
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert same_weights(model, ref)


def _optimizer_step_reference(ns: dict[str, t.Any], cls: str) -> t.Any:
    ref = fresh(ns, cls)
    opts = ref.configure_optimizers()
    opts = list(opts) if isinstance(opts, tuple) else [opts]
    step = 0
    for _ in range(2):
        for i, batch in enumerate(ns["make_data"]()):
            for idx, opt in enumerate(opts):
                if cls == "Alternating" and idx == 1 and (i + 1) % 2 != 0:
                    continue  # optimizer 1 steps every 2 batches; its closure does not run
                if cls == "WarmUp" and step < 500:
                    for pg in opt.param_groups:
                        pg["lr"] = min(1.0, (step + 1) / 500.0) * ref.hparams.learning_rate
                if cls == "Alternating":
                    loss = ref.training_step(batch, i, idx)
                else:
                    loss = ref.training_step(batch, i)
                opt.zero_grad()
                loss.backward()
                opt.step()
            step += 1
    return ref


@pytest.mark.parametrize("cls", ["Alternating", "WarmUp", "StepWrapped", "StepOwn"])
def test_automatic_optimizer_step_overrides(cls: str) -> None:
    ns = example("automatic_optimizer_step")
    model = ns["main"](ns[cls], max_epochs=2)
    assert same_weights(model, _optimizer_step_reference(ns, cls))


@pytest.mark.parametrize("cls", ["Plain", "Alternating", "WarmUp"])
def test_legacy_optimizer_step_overrides(cls: str) -> None:
    ns = example("legacy_optimizer_step")
    model = ns["main"](ns[cls], max_epochs=2)
    ref = fresh(ns, cls)
    opts = ref.configure_optimizers()
    opts = list(opts) if isinstance(opts, tuple) else [opts]
    step = 0
    for _ in range(2):
        for i, batch in enumerate(ns["make_data"]()):
            stepped = False
            for idx, opt in enumerate(opts):
                # "for opt in optimizers: train_step(opt); opt.step()": backward, then the hook
                if cls == "Alternating":
                    ref.training_step(batch, i, idx).backward()
                    if i % (2 if idx == 0 else 4) == 0:
                        opt.step()
                        opt.zero_grad()
                        stepped = True
                    continue
                ref.training_step(batch, i).backward()
                if cls == "WarmUp" and step < 500:
                    for pg in opt.param_groups:
                        pg["lr"] = min(1.0, float(step + 1) / 500.0) * ref.hparams.learning_rate
                opt.step()
                opt.zero_grad()
                stepped = True
            step += stepped
    assert same_weights(model, ref)
