"""The GAN of the reference documents, in a Fabric loop with toggling, against plain PyTorch."""

from __future__ import annotations

import contextlib
import typing as t

import torch
from torch import nn

from loopkit import Fabric

BATCHES = 5


def make_gan() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(7)
    generator = nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 3))
    discriminator = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 1))
    return generator, discriminator


def data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(3)
    return [
        (torch.randn(4, 3, generator=gen), torch.randn(4, 2, generator=gen))
        for _ in range(BATCHES)
    ]


def criterion(logits: torch.Tensor, target: float) -> torch.Tensor:
    return nn.functional.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


@contextlib.contextmanager
def frozen(params: t.Iterable[nn.Parameter]) -> t.Iterator[None]:
    """What the document says toggling does, written out by hand."""
    params = list(params)
    saved = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, saved):
            p.requires_grad_(flag)


def plain_gan(toggle: bool) -> tuple[nn.Module, nn.Module, list[torch.Tensor]]:
    generator, discriminator = make_gan()
    opt_g = torch.optim.Adam(generator.parameters(), lr=0.05)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=0.05)
    d_grads = []
    for x, z in data():
        g_x = generator(z)
        with frozen(generator.parameters()) if toggle else contextlib.nullcontext():
            err_d = criterion(discriminator(x), 1.0) + criterion(discriminator(g_x.detach()), 0.0)
            opt_d.zero_grad()
            err_d.backward()
            opt_d.step()
        with frozen(discriminator.parameters()) if toggle else contextlib.nullcontext():
            err_g = criterion(discriminator(g_x), 1.0)
            opt_g.zero_grad()
            err_g.backward()
            opt_g.step()
        d_grads.append(discriminator[0].weight.grad.clone())
    return generator, discriminator, d_grads


def fabric_gan() -> tuple[nn.Module, nn.Module, list[torch.Tensor]]:
    generator, discriminator = make_gan()
    fabric = Fabric(accelerator="cpu", plugins=["toggling"])
    toggling = fabric.get_plugin("toggling")
    g, opt_g = fabric.setup(generator, torch.optim.Adam(generator.parameters(), lr=0.05))
    d, opt_d = fabric.setup(discriminator, torch.optim.Adam(discriminator.parameters(), lr=0.05))
    optimizers = [opt_g, opt_d]
    d_grads = []
    for x, z in data():
        g_x = g(z)
        with toggling.toggled([g, d], opt_d, optimizers):
            err_d = criterion(d(x), 1.0) + criterion(d(g_x.detach()), 0.0)
            opt_d.zero_grad()
            fabric.backward(err_d, model=d)
            opt_d.step()
        toggling.toggle_optimizer([g, d], opt_g, optimizers)  # the paired form, as in 004
        err_g = criterion(d(g_x), 1.0)
        opt_g.zero_grad()
        fabric.backward(err_g, model=g)
        opt_g.step()
        toggling.untoggle_optimizer([g, d], opt_g)
        d_grads.append(discriminator[0].weight.grad.clone())
    return generator, discriminator, d_grads


def assert_same(a: nn.Module, b: nn.Module) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name


def test_gan_with_toggling_matches_the_plain_loop() -> None:
    g_ref, d_ref, grads_ref = plain_gan(toggle=True)
    g, d, grads = fabric_gan()
    assert_same(g, g_ref)
    assert_same(d, d_ref)
    # Toggling is visible in the discriminator's gradients after the generator's step: the
    # generator's loss did not write into them.
    for mine, ref in zip(grads, grads_ref):
        assert torch.equal(mine, ref)
    _, _, grads_untoggled = plain_gan(toggle=False)
    assert not torch.equal(grads_untoggled[-1], grads_ref[-1])
    assert all(p.requires_grad for p in [*g.parameters(), *d.parameters()])
