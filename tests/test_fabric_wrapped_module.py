"""Fabric.wrapped_module: the public way from a user's module to what setup() returned."""

from __future__ import annotations

import torch

from loopkit import Fabric


def test_wrapped_module_returns_the_object_setup_returned() -> None:
    fabric = Fabric(accelerator="cpu")
    generator, discriminator = torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)
    wrapped_g = fabric.setup(generator)
    wrapped_d = fabric.setup(discriminator)

    assert fabric.wrapped_module(generator) is wrapped_g
    assert fabric.wrapped_module(discriminator) is wrapped_d
    assert fabric.wrapped_module(wrapped_g) is wrapped_g
    assert fabric.wrapped_module(torch.nn.Linear(2, 2)) is None
