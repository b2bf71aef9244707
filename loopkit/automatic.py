"""Automatic optimization: what the Trainer does with one batch when the module does not step.

Per optimizer: ``training_step``, ``zero_grad`` at the start of an accumulation window,
``backward``, all in a closure handed to ``optimizer.step(closure=...)``; or through the
module's ``optimizer_step`` override, in whichever documented signature it uses. This is the
Trainer's hot path: the common case (one optimizer, the default ``optimizer_step``) has a lean
path whose cost per batch is what the Trainer adds over a plain loop (``bench/overhead.py``).

It must never step on a loss it cannot trust (non-finite, or one that carries no gradient), keep
a batch's graph alive past that batch, or import a plugin package: the toggling plugin is found
through the registry, by name. Logging, checkpoints and the loop belong to other modules.
"""

from __future__ import annotations

import collections.abc as c
import functools
import importlib
import inspect
import math
import typing as t
import warnings

import torch

from loopkit.module import LoopModule, LoopOptimizer, get_toggling
from loopkit.plugins import registry
from loopkit.wrappers import FabricOptimizer

if t.TYPE_CHECKING:
    from loopkit.trainer import Trainer


#: ``_forward_backward``'s default for ``out``: run training_step.
_RUN: t.Any = object()


class _SkipBatch(Exception):
    """Raised inside the closure when training_step returned None: abandons the step."""


_DEFAULT, _V2, _V1, _V0 = "default", "v2", "v1", "v0"


def _optimizer_step_style(module: LoopModule) -> tuple[str, int]:
    """Which of the documented ``optimizer_step`` signatures the module's override uses.

    Returns the style and how many positional arguments the override takes. Decided from the
    parameter names, once per fit.
    """
    fn = type(module).optimizer_step
    if fn is LoopModule.optimizer_step:
        return _DEFAULT, 4
    params = list(inspect.signature(module.optimizer_step).parameters.values())
    names = {p.name for p in params}
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        count = 8
    else:
        count = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)
    if "second_order_closure" in names or "optimizer_i" in names:
        return _V0, min(count, 5)
    if "optimizer_idx" in names or count >= 5:
        return _V1, min(count, 8)
    if count < 3:
        raise TypeError(
            f"{type(module).__name__}.optimizer_step{inspect.signature(module.optimizer_step)} "
            "does not match a supported signature: (epoch, batch_idx, optimizer, "
            "optimizer_closure), (epoch, batch_idx, optimizer, optimizer_idx, optimizer_closure, "
            "on_tpu, using_native_amp, using_lbfgs) or (current_epoch, batch_nb, optimizer, "
            "optimizer_i, second_order_closure=None)"
        )
    return _V2, count


def _takes_optimizer_idx(fn: c.Callable[..., t.Any]) -> tuple[bool, bool]:
    """(accepts an optimizer index, requires one) for a ``training_step``."""
    params = list(inspect.signature(fn).parameters.values())
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return True, False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if "optimizer_idx" in {p.name for p in params} or len(positional) >= 3:
        third = positional[2] if len(positional) >= 3 else None
        return True, third is not None and third.default is third.empty
    return False, False


class _AutomaticStep:
    """One batch of automatic optimization: per optimizer, training_step → zero_grad → backward
    → step, run as a closure passed to ``optimizer.step(closure=...)``.

    Gradients are zeroed before the first backward of an accumulation window (every batch when
    nothing accumulates), so an accumulating batch (``should_optimizer_step`` answered False)
    adds its gradients to the window's.
    """

    def __init__(self, trainer: Trainer) -> None:
        module = trainer.lightning_module
        self.trainer, self.module, self.fabric = trainer, module, trainer.fabric
        self.bus, self.progress = trainer.fabric.bus, trainer.progress
        self.wrapped = trainer._wrapped
        self.optimizers = list(trainer.optimizers)
        self.training_step = module.training_step
        self.redirect = trainer._redirect("training_step")
        self.direct = self.wrapped is not None and self.wrapped.forward_module is module
        self.style, self.nargs = _optimizer_step_style(module)
        self.step_hook: c.Callable[..., t.Any] = module.optimizer_step
        accepts, requires = _takes_optimizer_idx(module.training_step)
        if len(self.optimizers) > 1 and not accepts:
            raise TypeError(
                f"{type(module).__name__}.configure_optimizers() returned "
                f"{len(self.optimizers)} optimizers, so automatic optimization calls "
                "training_step(batch, batch_idx, optimizer_idx) once per optimizer, but "
                f"{type(module).__name__}.training_step{inspect.signature(module.training_step)} "
                "takes no optimizer_idx. Add that parameter, or set "
                "self.automatic_optimization = False and step the optimizers yourself"
            )
        self.pass_idx = len(self.optimizers) > 1 or requires
        overridden = type(module).optimizer_zero_grad is not LoopModule.optimizer_zero_grad
        self.zero_grad_hook = module.optimizer_zero_grad if overridden else None
        self.accumulated = [False] * len(self.optimizers)
        # The earliest API (reference 002) predates toggling: its schedules let gradients
        # accumulate across optimizers between steps, which freezing parameters would change.
        toggles = len(self.optimizers) > 1 and self.style is not _V0
        self.toggling = get_toggling(trainer) if toggles and "toggling" in registry() else None
        self.output: t.Any = None
        self.warned_none = False
        # Receivers of the query are known at fit start (the accumulation plugin attaches before).
        self.query = bool(self.bus.receivers("should_optimizer_step"))
        #: The common case (one optimizer, the default optimizer_step, nothing to ask) has its
        #: own lean path: this is the per-batch cost of the Trainer over a plain loop.
        self.simple = (
            len(self.optimizers) == 1
            and self.style is _DEFAULT
            and self.zero_grad_hook is None
            and not self.pass_idx
            and not self.query
        )
        # Read only where there is exactly one optimizer (the lean path, the closure).
        self.opt: LoopOptimizer = self.optimizers[0] if self.optimizers else None  # type: ignore[assignment]
        #: The lean path may run the closure itself and then step without one, where that is
        #: what ``opt.step(closure)`` would amount to (see :func:`_evaluates_closure_first`).
        self.eager = (
            self.simple
            and self.fabric._direct_step
            and _GLOBAL_STEP_PRE_HOOKS is not None
            and _evaluates_closure_first(self.opt)
        )
        # What was judged: a step patched onto the wrapper or the optimizer later (by a callback
        # at on_train_start, say) sends the lean path back to the closure.
        self.judged_steps = (
            (self.opt._step, self.opt.__dict__.get("step")) if self.eager else (None, None)
        )

    def entry(self) -> c.Callable[[t.Any, int], t.Any]:
        """The per-batch callable for the loop."""
        return self._simple if self.simple else self

    def _simple(self, batch: t.Any, batch_idx: int) -> t.Any:
        opt = self.opt
        # (The wrapper shares the optimizer's attribute dictionary: its step pre-hooks included.)
        if not (
            self.eager
            and torch.is_grad_enabled()
            and not opt._optimizer_step_pre_hooks  # type: ignore[attr-defined]
            and not _GLOBAL_STEP_PRE_HOOKS
            and not self.fabric._phase_wrappers["optimizer_step"]
            and opt._step is self.judged_steps[0]
            and opt.__dict__.get("step") is self.judged_steps[1]
        ):
            return self._simple_with_closure(batch, batch_idx)
        # What opt.step(closure=...) does for this optimizer, without its closure machinery:
        # the closure (training_step, zero_grad, backward), then the step. The same calls in the
        # same order, and the same hooks: Fabric's step fires on_before_optimizer_step after the
        # backward either way.
        self.output = None
        try:
            self._closure(batch, batch_idx)
        except _SkipBatch:
            self.output = None
            return None
        opt.step()
        out, self.output = self.output, None  # the graph is not kept until the next batch
        return _batch_output(out)

    def _simple_with_closure(self, batch: t.Any, batch_idx: int) -> t.Any:
        self.output = None
        try:  # noqa: SIM105 (a try is free; contextlib.suppress() is an object per batch)
            self.opt.step(closure=functools.partial(self._closure, batch, batch_idx))
        except _SkipBatch:
            pass
        out, self.output = self.output, None  # the graph is not kept until the next batch
        return _batch_output(out)

    def _closure(self, batch: t.Any, batch_idx: int) -> t.Any:
        # _forward_backward(batch, batch_idx, 0, self.opt, True, True, True), inlined for a
        # finite scalar loss tensor; anything else takes the general path.
        if self.direct and not self.fabric._forward_active:
            out = self.training_step(batch, batch_idx)
        else:
            out = self.redirect(batch, batch_idx)
        self.output = out
        if (
            type(out) is not torch.Tensor
            or not out.requires_grad
            or out.numel() != 1
            or not math.isfinite(out.item())
        ):
            return self._forward_backward(batch, batch_idx, 0, self.opt, True, True, True, out)
        self.opt.zero_grad()
        self.fabric.backward(out, model=self.wrapped)
        self.progress.stepped = True
        return out

    def __call__(self, batch: t.Any, batch_idx: int) -> t.Any:
        if not self.optimizers:
            self.output = None
            self._forward_backward(
                batch, batch_idx, 0, None, stepping=False, zero=False, mark=False
            )
            return _batch_output(self.output)
        accumulate = False
        if self.query:
            for _, answer in self.bus.call(
                "should_optimizer_step",
                trainer=self.trainer, module=self.module, batch_idx=batch_idx,
            ):  # fmt: skip
                if answer is False:
                    accumulate = True
        if len(self.optimizers) == 1:
            return self._optimize(0, self.optimizers[0], batch, batch_idx, accumulate)
        outputs = []
        for idx, opt in enumerate(self.optimizers):
            if self.toggling is not None:
                with self.toggling.toggled(
                    self.module, opt, self.optimizers, sync_grad=not accumulate, fabric=self.fabric
                ):
                    outputs.append(self._optimize(idx, opt, batch, batch_idx, accumulate))
            else:
                outputs.append(self._optimize(idx, opt, batch, batch_idx, accumulate))
        return outputs

    def _optimize(
        self, idx: int, opt: LoopOptimizer, batch: t.Any, batch_idx: int, accumulate: bool
    ) -> t.Any:
        self.output = None
        if accumulate:
            self._forward_backward(
                batch, batch_idx, idx, opt, stepping=False, zero=True, mark=False
            )
            return _batch_output(self.output)

        style, epoch = self.style, self.progress.epoch

        def closure() -> t.Any:
            return self._forward_backward(
                batch, batch_idx, idx, opt, stepping=True, zero=True, mark=style is not _V0
            )

        try:
            if style is _DEFAULT:
                opt.step(closure=closure)
            elif style is _V2:
                args: tuple[t.Any, ...] = (epoch, batch_idx, opt, closure)
                self.step_hook(*args[: self.nargs])
            elif style is _V1:
                lbfgs = isinstance(opt.optimizer, torch.optim.LBFGS)
                amp = bool(getattr(self.fabric.precision, "needs_fabric_backward", False))
                args = (epoch, batch_idx, opt, idx, closure, False, amp, lbfgs)
                self.step_hook(*args[: self.nargs])
            else:
                # The earliest API: training_step and backward ran before optimizer_step, which
                # steps and zeroes itself; second_order_closure re-evaluates (LBFGS).
                self._forward_backward(
                    batch, batch_idx, idx, opt, stepping=True, zero=False, mark=False
                )
                args = (epoch, batch_idx, opt, idx, closure)
                self.step_hook(*args[: self.nargs])
        except _SkipBatch:
            pass
        self.accumulated[idx] = False
        out, self.output = self.output, None
        return _batch_output(out)

    def _forward_backward(
        self,
        batch: t.Any,
        batch_idx: int,
        idx: int,
        opt: LoopOptimizer | None,
        stepping: bool,
        zero: bool,
        mark: bool,
        out: t.Any = _RUN,
    ) -> t.Any:
        """training_step, zero_grad (at the start of a window), backward.

        ``stepping``: run for a step (None from training_step abandons the step), else for an
        accumulating batch. ``zero``: zero gradients first unless the window accumulated some.
        ``mark``: count the batch as stepped (the closure ran inside a step). ``out``: what
        training_step returned, when the caller ran it already.
        """
        if out is _RUN:
            args = (batch, batch_idx, idx) if self.pass_idx else (batch, batch_idx)
            if self.direct and not self.fabric._forward_active:
                out = self.training_step(*args)
            else:
                out = self.redirect(*args)
        self.output = out
        if isinstance(out, torch.Tensor):
            loss = out
        elif out is None:
            if not self.warned_none:
                self.warned_none = True
                warnings.warn(
                    f"{type(self.module).__name__}.training_step returned None: the optimizer "
                    "does not step for that batch (warned once)",
                    UserWarning,
                    stacklevel=2,
                )
            if stepping:
                raise _SkipBatch
            return None
        elif isinstance(out, c.Mapping) and "loss" in out:
            loss = out["loss"]
        else:
            raise TypeError(
                f"{type(self.module).__name__}.training_step returned {_describe_output(out)}; "
                "in automatic optimization return the loss tensor, a dict with a 'loss' key, "
                "or None to skip the batch"
            )
        if opt is None:
            return loss
        if not loss.requires_grad:
            raise RuntimeError(
                f"{type(self.module).__name__}.training_step returned a loss that does not "
                "require grad (computed under torch.no_grad(), detached, or from no parameter), "
                "so no gradient can flow from it. Return the loss computed from the module's "
                "parameters, or None to skip the batch"
            )
        if not _finite(loss):
            raise FloatingPointError(
                f"{type(self.module).__name__}.training_step returned a non-finite loss "
                f"({loss.detach().flatten()[:4].tolist()}) at epoch {self.progress.epoch}, "
                f"batch {batch_idx} (global step {self.progress.global_step}). The Trainer stops "
                "rather than step on nan/inf gradients. Lower the learning rate, clip gradients "
                "(Trainer(gradient_clip_val=...)), check this batch's inputs, or return None "
                "from training_step to skip such batches"
            )
        if zero and not self.accumulated[idx]:
            if self.zero_grad_hook is not None:
                self.zero_grad_hook(self.progress.epoch, batch_idx, opt)
            else:
                opt.zero_grad()
        if not stepping:
            self.accumulated[idx] = True
        self.fabric.backward(loss, model=self.wrapped)
        if mark:
            self.progress.stepped = True
        return loss


#: torch's optimizers whose ``step(closure)`` calls the closure once, under ``enable_grad``,
#: before anything else it does (torch 2.x; LBFGS is not one: it calls it again and again).
_CLOSURE_FIRST = (
    "SGD", "Adam", "AdamW", "Adamax", "Adagrad", "Adadelta", "ASGD", "NAdam", "RAdam",
    "RMSprop", "Rprop", "SparseAdam", "Adafactor",
)  # fmt: skip

#: Step pre-hooks registered for every optimizer (torch.optim.register_optimizer_step_pre_hook):
#: they run before the step's closure, so while any is registered the closure goes to the step.
#: None where torch keeps them elsewhere: then the lean path always passes the closure.
_GLOBAL_STEP_PRE_HOOKS: c.Mapping[int, t.Any] | None = getattr(
    importlib.import_module("torch.optim.optimizer"), "_global_optimizer_pre_hooks", None
)


def _evaluates_closure_first(opt: LoopOptimizer) -> bool:
    """Whether ``opt.step(closure)`` equals ``closure(); opt.step()`` (while no step pre-hook is
    registered and grad is enabled).

    True when the ``step`` that runs is that of one of torch's optimizers in
    :data:`_CLOSURE_FIRST` (a subclass that does not override it included), and nothing but an
    LR scheduler's step counter is patched onto the optimizer or onto Fabric's wrapper. Such a
    step evaluates the closure before it reads any gradient, and returns what it returned, which
    the lean path discards. Decided once per fit.
    """
    wrapper_step = opt._step
    if getattr(wrapper_step, "__func__", None) is not FabricOptimizer._fabric_step and not getattr(
        wrapper_step, "_wrapped_by_lr_sched", False
    ):
        return False
    inner = opt.optimizer
    patched = inner.__dict__.get("step")
    if patched is not None and not getattr(patched, "_wrapped_by_lr_sched", False):
        return False
    owner = next((k for k in type(inner).__mro__ if "step" in k.__dict__), None)
    known = {getattr(torch.optim, name, None) for name in _CLOSURE_FIRST} - {None}
    return owner in known


def _finite(loss: torch.Tensor) -> bool:
    # On the hot path: for a one-element loss, item() costs a fraction of isfinite().all().
    if loss.numel() == 1:
        return math.isfinite(loss.item())
    return bool(torch.isfinite(loss).all())


def _batch_output(out: t.Any) -> t.Any:
    # What on_train_batch_end receives as outputs: {"loss": detached loss, ...} (as Lightning),
    # tensors detached so that the batch's graph is not kept alive into the next batch.
    if isinstance(out, torch.Tensor):
        return {"loss": out.detach()}
    if isinstance(out, c.Mapping):
        return {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in out.items()}
    return out


def _describe_output(out: object) -> str:
    if isinstance(out, c.Mapping):
        return f"a dict without a 'loss' key (keys: {', '.join(map(repr, out)) or 'none'})"
    return f"a {type(out).__name__}"
