"""Mixed precisions: the forward autocasts to a half dtype; parameters and gradients stay float32.

``bf16-mixed`` needs nothing more. ``16-mixed`` adds a :class:`torch.amp.GradScaler`: float16
has a narrow exponent range, so the loss is multiplied by a large scale before backward (small
gradients would otherwise flush to zero), the gradients are divided back before anyone reads them,
and a step whose gradients overflowed is skipped while the scale backs off.

How ``16-mixed`` drives the scaler through the kernel's step (see ``Fabric._optimizer_step``):

* backward phase: :meth:`FP16MixedPrecision.pre_backward` scales the loss.
* optimizer-step phase: the kernel calls :meth:`~FP16MixedPrecision.unscale_gradients` right
  before ``on_before_optimizer_step`` (after a closure ran); gradient clipping calls it too. A
  scaler may unscale an optimizer's gradients once per update, so later calls are no-ops.
  :meth:`~FP16MixedPrecision.optimizer_step` then lets the scaler step (or skip) the optimizer.
* the scaler's ``update()`` (grow or back off the scale) is deferred to the next backward, so
  that several optimizers stepping after one backward all unscale with the same scale; reading
  :attr:`~FP16MixedPrecision.scaler` or saving the state applies a pending update first.
"""

from __future__ import annotations

import contextlib
import typing as t

import torch

from loopkit.precision import Precision
from loopkit_precision._cast import cast_floating

if t.TYPE_CHECKING:
    import collections.abc as c

    from loopkit.fabric import Fabric

__all__ = ["BF16MixedPrecision", "FP16MixedPrecision", "MixedPrecision"]


def _device_type(device: str | torch.device) -> str:
    return torch.device(device).type


class MixedPrecision(Precision):
    """Autocast the forward to :attr:`autocast_dtype` on the device the host runs on.

    ``device`` (``"cpu"``, ``"cuda"``...) fixes the device type to autocast on; by default it is
    learnt from the Fabric the precision is attached to (before that: ``"cuda"`` when CUDA is
    available, else ``"cpu"``).
    """

    active = True
    #: The dtype autocast computes eligible operations in. Set by each subclass.
    autocast_dtype: t.ClassVar[torch.dtype]

    def __init__(self, device: str | torch.device | None = None) -> None:
        self._explicit_device = device is not None
        self._device_type: str | None = _device_type(device) if device is not None else None

    @property
    def device_type(self) -> str:
        """The device type autocast (and the grad scaler) run on."""
        if self._device_type is None:
            self._device_type = "cuda" if torch.cuda.is_available() else "cpu"
        return self._device_type

    def attach(self, host: Fabric) -> None:
        host_type = host.device.type
        if self._explicit_device and host_type != self._device_type:
            raise ValueError(
                f"{type(self).__name__}(device={self._device_type!r}) was given to a Fabric that "
                f"runs on {host_type!r}; leave device= out (it is taken from the Fabric) or "
                f"pass device={host_type!r}"
            )
        self._set_device_type(host_type)

    def _set_device_type(self, device_type: str) -> None:
        self._device_type = device_type

    def convert_input(self, data: t.Any) -> t.Any:
        return cast_floating(data, self.autocast_dtype)

    def convert_output(self, data: t.Any) -> t.Any:
        return cast_floating(data, torch.get_default_dtype())

    def forward_context(self) -> contextlib.AbstractContextManager[t.Any]:
        return torch.autocast(self.device_type, dtype=self.autocast_dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.plugin_name!r}, device_type={self.device_type!r})"


class BF16MixedPrecision(MixedPrecision):
    """``"bf16-mixed"`` (alias ``"bf16"``): bfloat16 autocast, no loss scaling needed."""

    plugin_name = "bf16-mixed"
    autocast_dtype = torch.bfloat16


class FP16MixedPrecision(MixedPrecision):
    """``"16-mixed"`` (aliases ``"16"``, ``16``): float16 autocast with a dynamic grad scaler.

    ``scaler`` may be a :class:`torch.amp.GradScaler` of your own (for another ``init_scale`` or
    ``growth_interval``); by default one is made for the device type. Gradients must come from
    ``fabric.backward(loss)``, which scales the loss. Optimizers that evaluate their closure
    several times per step (:class:`torch.optim.LBFGS`) cannot run under a grad scaler and are
    refused at their first step.
    """

    plugin_name = "16-mixed"
    autocast_dtype = torch.float16
    needs_fabric_backward = True

    def __init__(
        self,
        device: str | torch.device | None = None,
        scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        super().__init__(device)
        if scaler is not None and not isinstance(scaler, torch.amp.GradScaler):
            raise TypeError(
                f"FP16MixedPrecision(scaler=...) takes a torch.amp.GradScaler, got "
                f"{type(scaler).__name__}"
            )
        self._scaler = scaler
        self._own_scaler = scaler is None
        self._scaler_device: str | None = None
        # Optimizers (by id, as the scaler keys them) unscaled and not yet stepped, and stepped
        # since the last scaler.update(). An optimizer is in at most one of the two.
        self._unscaled: set[int] = set()
        self._stepped: set[int] = set()
        self._scaled_any = False

    # -- the scaler -------------------------------------------------------------------------

    def _get_scaler(self) -> torch.amp.GradScaler:
        if self._scaler is None:
            self._scaler = torch.amp.GradScaler(self.device_type)
            self._scaler_device = self.device_type
        return self._scaler

    def _set_device_type(self, device_type: str) -> None:
        super()._set_device_type(device_type)
        # A scaler we made before the host was known, for another device type: make it again,
        # keeping what it holds (nothing has been scaled by it yet in any sane flow).
        if self._own_scaler and self._scaler is not None and self._scaler_device != device_type:
            state = self._scaler.state_dict()
            self._scaler = None
            if state:
                self._get_scaler().load_state_dict(state)

    @property
    def scaler(self) -> torch.amp.GradScaler:
        """The grad scaler, with any update pending since the last step applied."""
        self._update_if_settled()
        return self._get_scaler()

    def _update(self) -> None:
        if self._stepped or self._unscaled:
            self._get_scaler().update()
            self._stepped.clear()
            self._unscaled.clear()

    def _update_if_settled(self) -> None:
        # Only when no optimizer sits unscaled waiting for its step: update() forgets that it
        # was unscaled, and its step would then unscale the gradients a second time.
        if self._stepped and not self._unscaled:
            self._update()

    # -- backward ---------------------------------------------------------------------------

    def pre_backward(self, loss: torch.Tensor, module: torch.nn.Module | None) -> torch.Tensor:
        self._update()
        self._scaled_any = True
        return self._get_scaler().scale(loss)

    # -- optimizer step ---------------------------------------------------------------------

    def unscale_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        key = id(optimizer)
        if key in self._unscaled or key in self._stepped or not _has_gradients(optimizer):
            return
        self._check_scaled(optimizer)
        self._get_scaler().unscale_(optimizer)
        self._unscaled.add(key)

    def optimizer_step(
        self,
        optimizer: torch.optim.Optimizer,
        closure: c.Callable[[], t.Any] | None = None,
        **kwargs: t.Any,
    ) -> t.Any:
        if isinstance(optimizer, torch.optim.LBFGS):
            raise TypeError(
                f"{type(optimizer).__name__} evaluates its closure several times per step, which "
                "a grad scaler cannot follow (it would unscale and check each evaluation's "
                "gradients once). 16-mixed does not support it: use precision='bf16-mixed' or "
                "'32-true', or an optimizer that takes one gradient per step"
            )
        closure_result = closure() if closure is not None else None
        if not _has_gradients(optimizer):
            # Nothing was back-propagated (a training_step that returned None): no step.
            return closure_result
        key = id(optimizer)
        if key in self._stepped:
            raise RuntimeError(
                f"{type(optimizer).__name__}.step() ran again without a fabric.backward(loss) "
                "since its last step. Under 16-mixed every gradient must come from "
                "fabric.backward(loss), which scales the loss; replace loss.backward() with "
                "fabric.backward(loss) (and zero the gradients between steps)"
            )
        self._check_scaled(optimizer)
        out = self._get_scaler().step(optimizer, **kwargs)
        self._unscaled.discard(key)
        self._stepped.add(key)
        return closure_result if closure is not None else out

    def _check_scaled(self, optimizer: torch.optim.Optimizer) -> None:
        if not self._scaled_any:
            raise RuntimeError(
                f"{type(optimizer).__name__} has gradients, but no loss went through "
                "fabric.backward(loss): the 16-mixed precision scales the loss there, so replace "
                "loss.backward() with fabric.backward(loss)"
            )

    # -- state ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, t.Any]:
        """The grad scaler's state (``scale``, ``_growth_tracker``, factors and interval)."""
        return self.scaler.state_dict()

    def load_state_dict(self, state: c.Mapping[str, t.Any]) -> None:
        if not state:
            raise ValueError(
                "16-mixed got an empty precision state: the checkpoint was saved under a "
                "precision without a grad scaler (or with a disabled one). Restore it with the "
                "precision it was saved with, or leave the precision out of the loaded state"
            )
        self._update_if_settled()
        self._get_scaler().load_state_dict(dict(state))


def _has_gradients(optimizer: torch.optim.Optimizer) -> bool:
    return any(p.grad is not None for group in optimizer.param_groups for p in group["params"])
