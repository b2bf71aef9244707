"""The hook bus: subscribe callbacks to named hooks and dispatch to them cheaply.

Subscriptions live in blinker signals, one per hook name, in a :class:`blinker.Namespace` owned
by each bus (never blinker's global namespace). Dispatch does not go through
:meth:`blinker.Signal.send`: each hook keeps a cached tuple of prepared receivers, rebuilt only
when a subscription changes, so that :meth:`Bus.call` does no introspection and builds no
strings. Signatures are inspected once, when a receiver is prepared.

This module must never import torch or any plugin: it is the part every other part sits on.
"""

from __future__ import annotations

import collections.abc as c
import difflib
import inspect
import itertools
import time
import typing as t
import warnings

import blinker

from loopkit import _log
from loopkit.hooks import ALIASES, HOOKS, is_default_hook

__all__ = ["Bus", "HookError", "Subscription"]


class HookError(TypeError):
    """A receiver does not fit the hook it is subscribed to."""


_seq = itertools.count()


class _Receiver:
    """One prepared subscription of a callable to a hook name (data only, no policy)."""

    __slots__ = (
        "fn", "owner", "hook", "priority", "seq", "every", "once",
        "takes_all", "pairs", "required", "positional", "label",
    )  # fmt: skip

    def __init__(
        self,
        fn: c.Callable[..., t.Any],
        owner: object,
        hook: str,
        priority: int,
        every: int | None,
        once: int | None,
    ) -> None:
        self.fn = fn
        self.owner = owner
        self.hook = hook
        self.priority = priority
        self.seq = next(_seq)
        self.every = every
        self.once = once
        self.label = _describe(fn, owner)
        params = _parameters(fn, self.label)
        kinds = {p.kind for p in params}
        #: True when the receiver takes **kwargs: it gets every keyword argument as passed.
        self.takes_all = inspect.Parameter.VAR_KEYWORD in kinds
        named = [p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        #: (receiver parameter, keyword the hook passes) for every keyword it can take.
        self.pairs: tuple[tuple[str, str], ...] = tuple(
            (p.name, ALIASES.get(p.name, p.name))
            for p in named
            if p.kind is not p.POSITIONAL_ONLY
        )
        self.required = frozenset(
            ALIASES.get(p.name, p.name) for p in named if p.default is p.empty
        )
        self.positional = tuple(
            ALIASES.get(p.name, p.name)
            for p in named
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        )

    def __call__(self, sender: object, **kwargs: t.Any) -> t.Any:
        # Lets blinker's own ``send`` reach loopkit receivers too (sender is ignored).
        return self.fn(**self.select(kwargs))

    def select(self, kwargs: c.Mapping[str, t.Any]) -> dict[str, t.Any]:
        return {name: kwargs[key] for name, key in self.pairs if key in kwargs}

    def missing(self, args: tuple[t.Any, ...], kwargs: c.Mapping[str, t.Any]) -> list[str]:
        given = set(self.positional[: len(args)]) | kwargs.keys()
        return sorted(self.required - given)


def _describe(fn: c.Callable[..., t.Any], owner: object) -> str:
    name = getattr(fn, "__qualname__", None) or repr(fn)
    if owner is not fn and not isinstance(owner, type):
        return f"{type(owner).__name__}.{getattr(fn, '__name__', name)}"
    return name


def _parameters(fn: c.Callable[..., t.Any], label: str) -> list[inspect.Parameter]:
    try:
        return list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError) as err:
        raise HookError(f"cannot read the signature of {label}: {err}") from err


class Subscription:
    """A handle on what one :meth:`Bus.connect` subscribed; ``disconnect()`` undoes it.

    Usable as a context manager: the subscription ends when the block exits.
    """

    def __init__(self, bus: Bus, receivers: list[_Receiver], obj: object | None) -> None:
        self._bus = bus
        self._receivers = receivers
        self._obj = obj

    @property
    def hooks(self) -> tuple[str, ...]:
        """The hook names this subscription covers (for an object: those known so far)."""
        return tuple(r.hook for r in self._receivers)

    def disconnect(self) -> None:
        self._bus._disconnect(self._receivers, self._obj)
        self._receivers = []
        self._obj = None

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()


class _Connected(t.NamedTuple):
    obj: object
    priority: int
    every: int | None
    once: int | None
    seq: int
    receivers: list[_Receiver]


class Bus:
    """Dispatches named hooks to subscribed callables, in a deterministic order.

    :param fires: names of declared hooks that the owner of this bus fires itself (a loop). A
        receiver of one of these that requires a parameter the hook does not pass is rejected
        at connect time. Other names, declared or not, are fired by user code with
        :meth:`call` and carry whatever arguments the caller passes.

    Order: higher ``priority`` first, then registration order. A receiver gets only the keyword
    arguments its signature names (all of them when it takes ``**kwargs``).
    """

    def __init__(self, fires: c.Iterable[str] = ()) -> None:
        self._signals = blinker.Namespace()
        self._fires: set[str] = set()
        self._objects: list[_Connected] = []
        #: hook name -> receivers in dispatch order; the hot path reads only this.
        self._cache: dict[str, tuple[_Receiver, ...]] = {}
        self._gated: set[str] = set()
        self._counts: dict[str, int] = {}
        self.add_fired(fires)

    # -- subscription (policy) -------------------------------------------------------------

    def signal(self, name: str) -> blinker.NamedSignal:
        """The blinker signal holding ``name``'s subscriptions on this bus."""
        return self._signals.signal(name)

    def add_fired(self, names: c.Iterable[str]) -> None:
        """Declare that this bus's owner fires ``names`` itself, validating current receivers."""
        names = set(names) - self._fires
        unknown = sorted(n for n in names if n not in HOOKS)
        if unknown:
            raise ValueError(f"not declared in loopkit.hooks: {', '.join(unknown)}")
        self._fires |= names
        for conn in self._objects:
            for r in conn.receivers:
                if r.hook in names:
                    self._validate(r)
        for name in names:
            for r in self._receivers_of(name):
                self._validate(r)

    def connect(
        self,
        target: object,
        hook: str | None = None,
        *,
        priority: int = 0,
        every: int | None = None,
        once: int | None = None,
    ) -> Subscription:
        """Subscribe ``target`` and return a handle that can undo it.

        With ``hook``, ``target`` is a callable subscribed to that one name. Without, ``target``
        is an object: each of its methods named as a declared hook is subscribed now, and any
        other method runs when its name is fired with :meth:`call`.

        ``every=N`` runs the receiver on the N-th, 2N-th, ... firing of the hook on this bus;
        ``once=N`` only on the N-th. Both are counted by the bus.
        """
        for key, value in (("every", every), ("once", once)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{key} must be a positive int, got {value!r}")
        if hook is not None:
            if not callable(target):
                raise TypeError(f"connect({target!r}, {hook!r}): a hook receiver must be callable")
            receiver = _Receiver(target, target, hook, priority, every, once)
            self._add(receiver)
            return Subscription(self, [receiver], None)
        if callable(target) and not hasattr(target, "__dict__") and not hasattr(target, "__slots__"):
            raise TypeError(f"connect({target!r}) needs a hook name for a plain callable")
        if any(conn.obj is target for conn in self._objects):
            raise ValueError(f"{type(target).__name__} instance is already connected to this bus")
        receivers: list[_Receiver] = []
        for name in _hook_methods(target):
            fn = getattr(target, name)
            receivers.append(_Receiver(fn, target, name, priority, every, once))
        for r in receivers:
            self._validate(r)
        conn = _Connected(target, priority, every, once, next(_seq), receivers)
        self._objects.append(conn)
        for r in receivers:
            self._add(r, validated=True)
        # Custom names resolved earlier may now have one more receiver.
        self._cache = {k: v for k, v in self._cache.items() if k in HOOKS}
        return Subscription(self, receivers, target)

    def disconnect(self, target: object) -> None:
        """Remove every subscription of ``target`` (an object or a callable)."""
        for conn in list(self._objects):
            if conn.obj is target:
                self._disconnect(conn.receivers, target)
        for name in list(self._signals):
            for r in self._receivers_of(name):
                if r.fn is target or r.owner is target:
                    self._disconnect([r], None)

    def receivers(self, name: str) -> tuple[c.Callable[..., t.Any], ...]:
        """The callables that :meth:`call` would run for ``name``, in order."""
        return tuple(r.fn for r in self._dispatch_list(name))

    def _add(self, receiver: _Receiver, *, validated: bool = False) -> None:
        if not validated:
            self._validate(receiver)
        self.signal(receiver.hook).connect(receiver, weak=False)
        self._invalidate(receiver.hook)

    def _disconnect(self, receivers: list[_Receiver], obj: object | None) -> None:
        for r in receivers:
            self.signal(r.hook).disconnect(r)
            self._invalidate(r.hook)
        if obj is not None:
            self._objects = [conn for conn in self._objects if conn.obj is not obj]
            self._cache = {k: v for k, v in self._cache.items() if k in HOOKS}

    def _invalidate(self, name: str) -> None:
        self._cache.pop(name, None)

    def _receivers_of(self, name: str) -> list[_Receiver]:
        if name not in self._signals:
            return []
        return [r for r in self.signal(name).receivers.values() if isinstance(r, _Receiver)]

    def _validate(self, r: _Receiver) -> None:
        if r.hook not in self._fires:
            return
        spec = HOOKS[r.hook]
        missing = sorted(r.required - set(spec.params))
        if missing:
            raise HookError(
                f"{r.label} requires parameter(s) {', '.join(map(repr, missing))}, but the loop "
                f"fires {r.hook!r} with ({', '.join(spec.params)}). Give "
                f"{'it' if len(missing) == 1 else 'them'} a default, or rename to one of those."
            )

    def _dispatch_list(self, name: str) -> tuple[_Receiver, ...]:
        receivers = self._cache.get(name)
        if receivers is None:
            receivers = self._build(name)
        return receivers

    def _build(self, name: str) -> tuple[_Receiver, ...]:
        found = self._receivers_of(name)
        if name not in HOOKS:
            # A custom name: every connected object with a real method of that name runs.
            for conn in self._objects:
                if any(r.hook == name for r in conn.receivers):
                    continue
                fn = getattr(conn.obj, name, None)
                if callable(fn) and not is_default_hook(fn):
                    r = _Receiver(fn, conn.obj, name, conn.priority, conn.every, conn.once)
                    r.seq = conn.seq
                    found.append(r)
        ordered = tuple(sorted(found, key=lambda r: (-r.priority, r.seq)))
        self._cache[name] = ordered
        if any(r.every is not None or r.once is not None for r in ordered):
            self._gated.add(name)
        else:
            self._gated.discard(name)
        return ordered

    # -- dispatch (hot path) ---------------------------------------------------------------

    def call(self, name: str, /, *args: t.Any, **kwargs: t.Any) -> list[tuple[object, t.Any]]:
        """Run every receiver of ``name``; return ``(owner, result)`` pairs in call order.

        Positional ``args`` are passed to every receiver as given; each keyword argument only
        to receivers whose signature names it. An exception from a receiver propagates with a
        note naming the receiver and the hook.
        """
        receivers = self._cache.get(name)
        if receivers is None:
            receivers = self._build(name)
        if not receivers:
            return []
        if name in self._gated:
            return self._call_gated(name, receivers, args, kwargs)
        if _log.tracing:
            return self._call_traced(name, receivers, args, kwargs)
        results = []
        for r in receivers:
            try:
                if r.takes_all:
                    out = r.fn(*args, **kwargs)
                else:
                    out = r.fn(*args, **{p: kwargs[k] for p, k in r.pairs if k in kwargs})
            except BaseException as err:
                if isinstance(err, TypeError):
                    _check_arguments(r, args, kwargs, err)
                err.add_note(f"raised by {r.label} while handling hook {name!r}")
                raise
            results.append((r.owner, out))
        return results

    def _call_gated(
        self,
        name: str,
        receivers: tuple[_Receiver, ...],
        args: tuple[t.Any, ...],
        kwargs: dict[str, t.Any],
    ) -> list[tuple[object, t.Any]]:
        count = self._counts[name] = self._counts.get(name, 0) + 1
        open_ = tuple(
            r
            for r in receivers
            if (r.every is None or count % r.every == 0) and (r.once is None or count == r.once)
        )
        if not open_:
            return []
        self._cache[name], saved = open_, receivers
        self._gated.discard(name)
        try:
            return self.call(name, *args, **kwargs)
        finally:
            self._cache[name] = saved
            self._gated.add(name)

    def _call_traced(
        self,
        name: str,
        receivers: tuple[_Receiver, ...],
        args: tuple[t.Any, ...],
        kwargs: dict[str, t.Any],
    ) -> list[tuple[object, t.Any]]:
        _log.tracing = False  # avoid tracing the nested call itself
        start = time.perf_counter()
        try:
            return self.call(name, *args, **kwargs)
        finally:
            _log.tracing = True
            _log.logger().debug(
                "hook",
                hook=name,
                receivers=[r.label for r in receivers],
                us=round((time.perf_counter() - start) * 1e6, 1),
            )


def _check_arguments(
    r: _Receiver, args: tuple[t.Any, ...], kwargs: dict[str, t.Any], err: TypeError
) -> None:
    # Only reached when a receiver raised TypeError: tell apart "the caller did not pass what
    # the receiver requires" from a TypeError raised inside the receiver's own code.
    missing = r.missing(args, kwargs)
    if missing and not r.takes_all:
        raise HookError(
            f"{r.label} requires {', '.join(map(repr, missing))}, which the call of hook "
            f"{r.hook!r} did not pass (it passed {', '.join(kwargs) or 'no keyword arguments'})"
        ) from err


def _hook_methods(obj: object) -> list[str]:
    """Names of ``obj``'s methods that subscribe to declared hooks; warns on near-misses."""
    names = []
    for name in dir(type(obj)):
        if not name.startswith("on_"):
            continue
        fn = getattr(obj, name, None)
        if not callable(fn) or is_default_hook(fn):
            continue
        if name in HOOKS:
            names.append(name)
            continue
        close = difflib.get_close_matches(name, HOOKS, n=1, cutoff=0.85)
        if close:
            warnings.warn(
                f"{type(obj).__name__}.{name} is not a loopkit hook and will only run when "
                f"fired by name with call(); did you mean {close[0]!r}?",
                UserWarning,
                stacklevel=3,
            )
    return names
