"""True (non-mixed) precisions: the module, its inputs and its gradients all in one dtype.

``64-true`` (float64), ``bf16-true`` and ``16-true`` convert the module's floating-point
parameters and buffers once at set-up, cast floating inputs to the same dtype before each forward,
and hand outputs back in torch's default dtype (float32). No grad scaler: gradients have the
parameters' dtype and are never scaled.
"""

from __future__ import annotations

import contextlib
import typing as t

import torch

from loopkit.precision import Precision
from loopkit_precision._cast import cast_floating, default_dtype

__all__ = ["BF16TruePrecision", "DoublePrecision", "FP16TruePrecision", "TruePrecision"]


class TruePrecision(Precision):
    """Everything in :attr:`dtype`: parameters, buffers, inputs, activations and gradients.

    Module set-up, ``Fabric.init_module``, ``Fabric.init_tensor`` and the forward run with
    :attr:`dtype` as torch's default dtype, so tensors created there get it too.
    """

    active = True
    #: The dtype of parameters, inputs and gradients. Set by each subclass.
    dtype: t.ClassVar[torch.dtype]

    def convert_module(self, module: torch.nn.Module) -> torch.nn.Module:
        return module.to(dtype=self.dtype)

    def convert_input(self, data: t.Any) -> t.Any:
        return cast_floating(data, self.dtype)

    def convert_output(self, data: t.Any) -> t.Any:
        return cast_floating(data, torch.get_default_dtype())

    def forward_context(self) -> contextlib.AbstractContextManager[t.Any]:
        return default_dtype(self.dtype)

    def module_init_context(self) -> contextlib.AbstractContextManager[t.Any]:
        return default_dtype(self.dtype)

    def tensor_init_context(self) -> contextlib.AbstractContextManager[t.Any]:
        return default_dtype(self.dtype)


class DoublePrecision(TruePrecision):
    """``"64-true"`` (alias ``"64"``, ``64``): float64 throughout."""

    plugin_name = "64-true"
    dtype = torch.float64
    param_dtype = torch.float64


class BF16TruePrecision(TruePrecision):
    """``"bf16-true"``: bfloat16 throughout; half the memory of float32, no loss scaling."""

    plugin_name = "bf16-true"
    dtype = torch.bfloat16
    param_dtype = torch.bfloat16


class FP16TruePrecision(TruePrecision):
    """``"16-true"``: float16 throughout; no grad scaler, so small gradients may underflow."""

    plugin_name = "16-true"
    dtype = torch.float16
    param_dtype = torch.float16
