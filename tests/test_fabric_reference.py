"""Every example of the Fabric reference documents runs with only its import line changed.

The documents are ``/work/shared/reference/000_*`` (multiple models and optimizers) and ``003_*``
(Fabric methods). Each test below holds one of their code blocks as written, with
``from lightning.fabric import Fabric`` replaced by ``from loopkit import Fabric``; what the
documents leave undefined (``LitModel``, ``train_dataset``, ``loss_fn``...) is defined here,
above the block. Where a document shows alternatives one after another (``setup`` with and
without ``move_to_device``), each alternative runs on its own objects, as a user would write it.
"""

from __future__ import annotations

import importlib.util
import typing as t
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from loopkit import Fabric


@pytest.fixture(autouse=True)
def _seed_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("LOOPKIT_GLOBAL_SEED", "LOOPKIT_SEED_WORKERS"):
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)


class LitModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer1 = nn.Linear(4, 8)
        self.layer2 = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer2(self.layer1(x).relu())


class Encoder(nn.Linear):
    def __init__(self) -> None:
        super().__init__(4, 2)


class Decoder(nn.Linear):
    def __init__(self) -> None:
        super().__init__(2, 4)


Generator, Discriminator = Encoder, Decoder


def _train_one_step(fabric: Fabric, model: t.Any, *optimizers: t.Any) -> None:
    fabric.backward(model(torch.randn(3, 4)).sum())
    for optimizer in optimizers:
        optimizer.step()
        optimizer.zero_grad()


# -- 000: multiple models and optimizers ---------------------------------------------------------


def test_000_one_model_one_optimizer() -> None:
    import torch

    from loopkit import Fabric

    fabric = Fabric()

    # Instantiate model and optimizer
    model = LitModel()
    optimizer = torch.optim.Adam(model.parameters())

    # Set up the model and optimizer together
    model, optimizer = fabric.setup(model, optimizer)

    _train_one_step(fabric, model, optimizer)


def test_000_one_model_multiple_optimizers() -> None:
    fabric = Fabric()

    # Instantiate model and optimizers
    model = LitModel()
    optimizer1 = torch.optim.SGD(model.layer1.parameters(), lr=0.003)
    optimizer2 = torch.optim.SGD(model.layer2.parameters(), lr=0.01)

    # Set up the model and optimizers together
    model, optimizer1, optimizer2 = fabric.setup(model, optimizer1, optimizer2)

    before = model.layer1.weight.detach().clone()
    _train_one_step(fabric, model, optimizer1, optimizer2)
    assert not torch.equal(before, model.layer1.weight)


def test_000_multiple_models_one_optimizer() -> None:
    fabric = Fabric()

    class AutoEncoder(torch.nn.Module):
        def __init__(self):  # type: ignore[no-untyped-def]
            super().__init__()

            # Group all models under a common nn.Module
            self.encoder = Encoder()
            self.decoder = Decoder()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.decoder(self.encoder(x))

    # Instantiate the big model
    autoencoder = AutoEncoder()
    optimizer = torch.optim.SGD(autoencoder.parameters(), lr=0.1)

    # Set up the model(s) and optimizer together
    autoencoder, optimizer = fabric.setup(autoencoder, optimizer)

    before = autoencoder.encoder.weight.detach().clone()
    _train_one_step(fabric, autoencoder, optimizer)
    assert not torch.equal(before, autoencoder.encoder.weight)


def test_000_multiple_models_multiple_optimizers() -> None:
    fabric = Fabric()

    # Two models
    generator = Generator()
    discriminator = Discriminator()

    # Two optimizers
    optimizer_gen = torch.optim.SGD(generator.parameters(), lr=0.01)
    optimizer_dis = torch.optim.SGD(discriminator.parameters(), lr=0.001)

    # Set up generator
    generator, optimizer_gen = fabric.setup(generator, optimizer_gen)
    # Set up discriminator
    discriminator, optimizer_dis = fabric.setup(discriminator, optimizer_dis)

    fabric.backward(discriminator(generator(torch.randn(3, 4))).sum())
    optimizer_gen.step()
    optimizer_dis.step()


# -- 003: Fabric methods -------------------------------------------------------------------------


def test_003_setup() -> None:
    fabric = Fabric()

    model = nn.Linear(32, 64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001)

    # Set up model and optimizer for accelerated training
    model, optimizer = fabric.setup(model, optimizer)

    model = nn.Linear(32, 64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001)

    # If you don't want Fabric to set the device
    model, optimizer = fabric.setup(model, optimizer, move_to_device=False)

    assert model(torch.randn(2, 32)).shape == (2, 64)


def test_003_setup_dataloaders() -> None:
    fabric = Fabric()
    # The document spells it torch.utils.DataLoader.
    torch.utils.DataLoader = torch.utils.data.DataLoader  # type: ignore[attr-defined]
    train_dataset = TensorDataset(torch.randn(8, 2))
    test_dataset = TensorDataset(torch.randn(4, 2))
    try:
        train_data = torch.utils.DataLoader(train_dataset, batch_size=2)  # type: ignore[attr-defined]
        test_data = torch.utils.DataLoader(test_dataset, batch_size=2)  # type: ignore[attr-defined]

        train_data, test_data = fabric.setup_dataloaders(train_data, test_data)
        assert len(list(train_data)) == 4 and len(list(test_data)) == 2

        train_data = torch.utils.DataLoader(train_dataset)  # type: ignore[attr-defined]
        test_data = torch.utils.DataLoader(test_dataset)  # type: ignore[attr-defined]

        # If you don't want Fabric to move the data to the device
        train_data, test_data = fabric.setup_dataloaders(
            train_data, test_data, move_to_device=False
        )

        train_data = torch.utils.DataLoader(train_dataset)  # type: ignore[attr-defined]
        test_data = torch.utils.DataLoader(test_dataset)  # type: ignore[attr-defined]

        # If you don't want Fabric to replace the sampler in the context of distributed training
        train_data, test_data = fabric.setup_dataloaders(
            train_data, test_data, replace_sampler=False
        )
        assert len(list(train_data)) == 8
    finally:
        del torch.utils.DataLoader  # type: ignore[attr-defined]


def test_003_backward() -> None:
    fabric = Fabric()
    model = fabric.setup(nn.Linear(3, 1))
    input, target = torch.randn(4, 3), torch.randn(4, 1)
    loss_fn = nn.functional.mse_loss

    output = model(input)
    loss = loss_fn(output, target)

    # loss.backward()
    fabric.backward(loss)

    assert model.weight.grad is not None


def test_003_to_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    torch.save({"x": [torch.ones(2)], "y": torch.zeros(1)}, "dataset.pt")
    fabric = Fabric()

    data = torch.load("dataset.pt")
    data = fabric.to_device(data)

    assert data["x"][0].device == fabric.device


def test_003_seed_everything() -> None:
    fabric = Fabric()

    # Instead of `torch.manual_seed(...)`, call:
    fabric.seed_everything(1234)

    first = torch.rand(3)
    torch.manual_seed(1234)
    assert torch.equal(first, torch.rand(3))


def test_003_autocast() -> None:
    fabric = Fabric()
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    inputs, target = torch.randn(4, 3), torch.randn(4, 1)
    loss_function = nn.functional.mse_loss

    model, optimizer = fabric.setup(model, optimizer)

    # Fabric handles precision automatically for the model
    output = model(inputs)

    with fabric.autocast():  # optional
        loss = loss_function(output, target)

    fabric.backward(loss)


def test_003_print(capsys: pytest.CaptureFixture[str]) -> None:
    fabric = Fabric()
    epoch, num_epochs, loss = 1, 10, 0.5

    # Print only on the main process
    fabric.print(f"{epoch}/{num_epochs}| Train Epoch Loss: {loss}")

    assert capsys.readouterr().out == "1/10| Train Epoch Loss: 0.5\n"


def test_003_save_and_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    fabric = Fabric()
    model = fabric.setup(nn.Linear(3, 1))

    # Instead of `torch.save(...)`, call:
    fabric.save(model.state_dict(), "path/to/checkpoint.ckpt")

    # Instead of `torch.load(...)`, call:
    loaded = fabric.load("path/to/checkpoint.ckpt")

    assert list(loaded) == ["weight", "bias"]
    assert torch.equal(loaded["weight"], model.weight)


def test_003_barrier(tmp_path: Path) -> None:
    fabric = Fabric()
    downloaded: list[str] = []

    def download_data(url: str) -> None:
        downloaded.append(url)

    # Download data only on one process
    if fabric.global_rank == 0:
        download_data("http://...")

    # Wait until all processes meet up here
    fabric.barrier()

    # All processes are allowed to read the data now
    assert downloaded == ["http://..."]


def test_003_no_backward_sync() -> None:
    fabric = Fabric()
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    plain = nn.Linear(3, 1)
    plain.load_state_dict(model.state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    plain_optimizer = torch.optim.SGD(plain.parameters(), lr=0.1)
    model, optimizer = fabric.setup(model, optimizer)
    batches = [torch.randn(2, 3) for _ in range(17)]

    for batch_idx, input in enumerate(batches):
        # Accumulate gradient 8 batches at a time
        is_accumulating = batch_idx % 8 != 0

        with fabric.no_backward_sync(model, enabled=is_accumulating):
            output = model(input)
            loss = output.sum()
            fabric.backward(loss)
            ...

        # Step the optimizer every 8 batches
        if not is_accumulating:
            optimizer.step()
            optimizer.zero_grad()

    for batch_idx, input in enumerate(batches):
        plain(input).sum().backward()
        if batch_idx % 8 == 0:
            plain_optimizer.step()
            plain_optimizer.zero_grad()
    assert torch.equal(plain.weight, model.weight)


def test_003_call() -> None:
    calls: list[tuple[str, t.Any]] = []

    class MyCallback:
        def on_train_start(self):  # type: ignore[no-untyped-def]
            calls.append(("on_train_start", None))
            ...

        def on_train_epoch_end(self, model, results):  # type: ignore[no-untyped-def]
            calls.append(("on_train_epoch_end", (model, results)))
            ...

    fabric = Fabric(callbacks=[MyCallback()])

    # Call any hook by name
    fabric.call("on_train_start")

    # Pass in additional arguments that the hook requires
    fabric.call("on_train_epoch_end", model=..., results={...})

    # Only the callbacks that have this method defined will be executed
    fabric.call("undefined")

    assert calls == [("on_train_start", None), ("on_train_epoch_end", (..., {...}))]


def test_003_log_and_log_dict_with_tensorboard(tmp_path: Path) -> None:
    if importlib.util.find_spec("loopkit_logging") is None:
        pytest.skip("needs loopkit-logging for TensorBoardLogger")
    if importlib.util.find_spec("tensorboard") is None:
        pytest.skip("needs tensorboard")
    from loopkit_logging import TensorBoardLogger

    loss, acc = torch.tensor(0.5), torch.tensor(0.75)

    # Set the logger in Fabric
    fabric = Fabric(loggers=TensorBoardLogger(root_dir=tmp_path))

    # Anywhere in your training loop or model:
    fabric.log("loss", loss)

    # Or send multiple metrics at once:
    fabric.log_dict({"loss": loss, "accuracy": acc})

    for logger in fabric.loggers:
        t.cast(t.Any, logger).finalize("success")
    assert list(tmp_path.rglob("events.out.tfevents.*"))


def test_003_log_under_the_hood() -> None:
    received: list[tuple[dict[str, float], int | None]] = []

    class Logger:
        def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
            received.append((metrics, step))

    fabric = Fabric(loggers=[Logger(), Logger()])
    fabric.log("loss", torch.tensor(0.5), step=2)
    # what the document says happens: every logger gets log_metrics(metrics=..., step=...)
    assert received == [({"loss": 0.5}, 2), ({"loss": 0.5}, 2)]

    # If no loggers are given to Fabric (default), log and log_dict won't do anything.
    Fabric().log_dict({"loss": torch.tensor(0.5)})
