"""The hook bus: subscribe callbacks to named hooks and dispatch to them cheaply.

Subscriptions live in blinker signals, one per hook name, in a :class:`blinker.Namespace` owned
by each bus (never blinker's global namespace). Dispatch does not go through
:meth:`blinker.Signal.send`: for each hook name the bus keeps a cached tuple of its receivers in
dispatch order, and from it a dispatcher function compiled once, both rebuilt only when a
subscription changes. The dispatcher makes one plain call per receiver, reading the keywords that
receiver takes straight from the caller's keyword arguments, so :meth:`Bus.call` does no
introspection and builds no strings. Signatures are inspected once, when a receiver is connected
(or, for a custom hook name, first resolved).

The module is split as data (:class:`_Receiver`), policy (the subscription methods of
:class:`Bus`, :func:`_compile`) and the hot path (:meth:`Bus.call`), which holds no policy.

This module must never import torch or any plugin: it is the part every other part sits on.
"""

from __future__ import annotations

import collections.abc as c
import functools
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
    """A receiver does not fit its hook, or a call of the hook did not pass what it requires."""


#: Registration order across every bus; ties in priority are broken by it.
_seq = itertools.count()

#: A compiled dispatcher: takes the caller's keyword arguments, returns (owner, result) pairs.
_Dispatcher = c.Callable[[dict[str, t.Any]], list[tuple[object, t.Any]]]

_P = inspect.Parameter


# -- data ---------------------------------------------------------------------------------------


class _Receiver:
    """One subscription of a callable to a hook name, with its signature read once."""

    __slots__ = (
        "fn", "owner", "hook", "priority", "seq", "every", "once", "fired", "label",
        "params", "takes_all", "_selectors",
    )  # fmt: skip

    def __init__(
        self,
        fn: c.Callable[..., t.Any],
        owner: object,
        hook: str,
        priority: int,
        every: int | None,
        once: int | None,
        seq: int | None = None,
    ) -> None:
        self.fn = fn
        self.owner = owner
        self.hook = hook
        self.priority = priority
        self.seq = next(_seq) if seq is None else seq
        self.every = every
        self.once = once
        #: Firings of the hook since this receiver subscribed; counted only under a filter.
        self.fired = 0
        self.label = _describe(fn, owner)
        signature = _parameters(fn, self.label)
        #: True when the receiver takes ``**kwargs``: it gets every keyword argument passed.
        self.takes_all = any(p.kind is _P.VAR_KEYWORD for p in signature)
        #: Named parameters in signature order; each is filled by the keyword of its name (or
        #: its alias), positional ones positionally.
        self.params = tuple(
            p for p in signature if p.kind not in (_P.VAR_POSITIONAL, _P.VAR_KEYWORD)
        )
        self._selectors: dict[int, c.Callable[[tuple[t.Any, ...], dict[str, t.Any]], t.Any]] = {}

    def __call__(self, sender: object, **kwargs: t.Any) -> t.Any:
        # Lets blinker's own ``send`` reach loopkit receivers too (the sender is ignored).
        return self.invoke((), kwargs)

    def needs(self, nargs: int, keys: c.Collection[str]) -> list[str]:
        """Required parameters left unfilled by ``nargs`` positional and ``keys`` keywords."""
        missing = []
        for i, p in enumerate(self.params):
            if p.default is not _P.empty or p.name in keys or ALIASES.get(p.name) in keys:
                continue
            if i < nargs and p.kind is not _P.KEYWORD_ONLY:
                continue
            missing.append(p.name)
        return missing

    def missing_error(self, missing: list[str], keys: c.Iterable[str], nargs: int = 0) -> HookError:
        passed = ", ".join(keys) or "no keyword arguments"
        if nargs:
            passed += f" and {nargs} positional argument(s)"
        return HookError(
            f"{self.label} requires {', '.join(map(repr, missing))}, which the call of hook "
            f"{self.hook!r} did not pass (it passed {passed}). Pass "
            f"{'it' if len(missing) == 1 else 'them'} to call(), or give the parameter a default."
        )

    def call_source(self, fn_var: str, nargs: int, namespace: dict[str, t.Any]) -> str:
        """Python source of a call of this receiver; the objects it names go into ``namespace``.

        Positional ``args`` fill the first ``nargs`` positional parameters; every other named
        parameter is read from ``kwargs`` by its name (or its alias), positional ones passed
        positionally. A receiver taking ``**kwargs`` gets the whole of ``kwargs``. Parameter
        names come from a signature, so they are identifiers; keyword names are embedded as
        string literals.
        """
        namespace[fn_var] = self.fn
        parts = ["*args"] if nargs else []
        # Positional arguments fill the leading positional parameters; keyword-only ones remain.
        rest = [p for i, p in enumerate(self.params) if i >= nargs or p.kind is _P.KEYWORD_ONLY]
        if self.takes_all:
            # Only what ``**kwargs`` cannot bind is passed explicitly: positional-only parameters
            # and aliased names the call did not pass under the parameter's own name.
            positional_only = [p for p in rest if p.kind is _P.POSITIONAL_ONLY]
            parts += [self._value_source(p, fn_var, namespace) for p in positional_only]
            spread = "kwargs"
            renamed = tuple((p.name, ALIASES[p.name]) for p in rest if p.name in ALIASES)
            if renamed:
                namespace[f"{fn_var}_aliases"] = renamed
                spread = f"_with_aliases({spread}, {fn_var}_aliases)"
            if positional_only:
                namespace[f"{fn_var}_bound"] = frozenset(p.name for p in positional_only)
                spread = f"_without({spread}, {fn_var}_bound)"
            parts.append(f"**{spread}")
        else:
            for p in rest:
                value = self._value_source(p, fn_var, namespace)
                parts.append(f"{p.name}={value}" if p.kind is _P.KEYWORD_ONLY else value)
        return f"{fn_var}({', '.join(parts)})"

    def _value_source(self, p: inspect.Parameter, fn_var: str, namespace: dict[str, t.Any]) -> str:
        name, alias = p.name, ALIASES.get(p.name)
        if p.default is _P.empty:
            if alias is None:
                return f"kwargs[{name!r}]"
            return f"(kwargs[{name!r}] if {name!r} in kwargs else kwargs[{alias!r}])"
        default = f"{fn_var}_{name}_default"
        namespace[default] = p.default
        if alias is None:
            return f"kwargs.get({name!r}, {default})"
        return f"kwargs.get({name!r}, kwargs.get({alias!r}, {default}))"

    def invoke(self, args: tuple[t.Any, ...], kwargs: dict[str, t.Any]) -> t.Any:
        """Call the receiver with positional ``args`` and the keywords it takes (general path)."""
        nargs = len(args)
        select = self._selectors.get(nargs)
        if select is None:
            namespace: dict[str, t.Any] = {"_with_aliases": _with_aliases, "_without": _without}
            source = f"lambda args, kwargs: {self.call_source('fn', nargs, namespace)}"
            select = self._selectors[nargs] = eval(source, namespace)
        return select(args, kwargs)


def _with_aliases(
    kwargs: dict[str, t.Any], renamed: tuple[tuple[str, str], ...]
) -> dict[str, t.Any]:
    out = dict(kwargs)
    for name, alias in renamed:
        if name not in out and alias in out:
            out[name] = out[alias]
    return out


def _without(kwargs: dict[str, t.Any], names: frozenset[str]) -> dict[str, t.Any]:
    return {k: v for k, v in kwargs.items() if k not in names}


def _describe(fn: c.Callable[..., t.Any], owner: object) -> str:
    name = getattr(fn, "__name__", None)
    if owner is not fn and name is not None and not isinstance(owner, type):
        return f"{type(owner).__name__}.{name}"
    return str(getattr(fn, "__qualname__", None) or name or repr(fn))


def _parameters(fn: c.Callable[..., t.Any], label: str) -> list[inspect.Parameter]:
    try:
        return list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError) as err:
        raise HookError(
            f"cannot read the signature of {label}: {err}; wrap it in a Python function"
        ) from err


def _failed(err: BaseException, r: _Receiver, kwargs: dict[str, t.Any]) -> None:
    """Explain ``err``, raised by the call of ``r`` in a dispatcher (the error path only).

    A ``KeyError`` or ``TypeError`` raised by the call itself (not inside the receiver: the
    traceback ends in the dispatcher's frame) means the call of the hook did not pass what the
    receiver requires; that becomes a :class:`HookError`. Anything else gets a note naming the
    receiver and the hook, and the dispatcher re-raises it unchanged.
    """
    tb = err.__traceback__
    if isinstance(err, (KeyError, TypeError)) and (tb is None or tb.tb_next is None):
        missing = r.needs(0, kwargs)
        if missing:
            raise r.missing_error(missing, kwargs) from None
    _log.add_note(err, f"raised by {r.label} while handling hook {r.hook!r}")


def _compile(name: str, receivers: tuple[_Receiver, ...]) -> _Dispatcher:
    """A function calling ``receivers`` in order with the keywords each takes; see module doc.

    One statement per receiver, each in a ``try`` that costs nothing until something raises.
    """
    namespace: dict[str, t.Any] = {
        "_failed": _failed,
        "_with_aliases": _with_aliases,
        "_without": _without,
    }
    lines = ["def dispatch(kwargs):"]
    for i, r in enumerate(receivers):
        namespace[f"r{i}"] = r
        namespace[f"o{i}"] = r.owner
        lines += [
            "    try:",
            f"        x{i} = {r.call_source(f'f{i}', 0, namespace)}",
            "    except BaseException as err:",
            f"        _failed(err, r{i}, kwargs)",
            "        raise",
        ]
    lines.append(f"    return [{', '.join(f'(o{i}, x{i})' for i in range(len(receivers)))}]")
    code = compile("\n".join(lines), f"<loopkit dispatch {name!r}>", "exec")
    exec(code, namespace)
    dispatch: _Dispatcher = namespace["dispatch"]
    return dispatch


class Subscription:
    """A handle on what one :meth:`Bus.connect` subscribed; :meth:`remove` undoes it.

    Usable as a context manager: the subscription ends when the block exits.
    """

    __slots__ = ("_bus", "_conn", "_receivers")

    def __init__(self, bus: Bus, receivers: list[_Receiver], conn: _Connected | None) -> None:
        self._bus: Bus | None = bus
        self._receivers = receivers
        self._conn = conn

    @property
    def hooks(self) -> tuple[str, ...]:
        """Hook names covered: for an object, its declared hooks and custom names resolved yet."""
        names = [r.hook for r in self._receivers]
        if self._conn is not None:
            names += [n for n, r in self._conn.custom.items() if r is not None]
        return tuple(names)

    @property
    def active(self) -> bool:
        """False once :meth:`remove` has run."""
        return self._bus is not None

    def remove(self) -> None:
        """Unsubscribe everything this handle covers. Calling it again does nothing."""
        if self._bus is not None:
            self._bus._remove(self._receivers, self._conn)
            self._bus = None

    disconnect = remove

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        return f"<Subscription {', '.join(self.hooks) or 'of nothing'} ({state})>"


class _Connected:
    """An object connected whole: its filters apply to each of its hooks, custom ones included."""

    __slots__ = ("obj", "priority", "every", "once", "seq", "receivers", "custom")

    def __init__(self, obj: object, priority: int, every: int | None, once: int | None) -> None:
        self.obj = obj
        self.priority = priority
        self.every = every
        self.once = once
        self.seq = next(_seq)
        self.receivers: list[_Receiver] = []
        #: custom hook name -> the object's receiver for it (None: it has no such method).
        self.custom: dict[str, _Receiver | None] = {}


# -- policy -------------------------------------------------------------------------------------


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
        #: hook name -> its receivers in dispatch order; () when nobody listens.
        self._ordered: dict[str, tuple[_Receiver, ...]] = {}
        #: hook name -> compiled dispatcher (None: nobody listens); the hot path reads only this.
        self._dispatchers: dict[str, _Dispatcher | None] = {}
        #: hook names with an ``every``/``once`` receiver.
        self._filtered: set[str] = set()
        #: Grows whenever a subscription changes; :attr:`watchers` are then called (no
        #: arguments), so an owner can cache what depends on who listens without asking on
        #: every call (Fabric skips building the arguments of hooks nobody receives).
        self.version = 0
        self.watchers: list[c.Callable[[], None]] = []
        self.add_fired(fires)

    def __repr__(self) -> str:
        hooks = sorted(n for n, s in self._signals.items() if s.receivers)
        return f"<Bus: {len(self._objects)} object(s); hooks with receivers: {hooks}>"

    @property
    def fires(self) -> frozenset[str]:
        """The declared hooks this bus's owner fires itself (receivers are checked against them)."""
        return frozenset(self._fires)

    def add_fired(self, names: c.Iterable[str]) -> None:
        """Declare that this bus's owner fires ``names`` itself, validating current receivers."""
        new = set(names) - self._fires
        unknown = sorted(n for n in new if n not in HOOKS)
        if unknown:
            raise ValueError(
                f"not declared in loopkit.hooks: {', '.join(unknown)}; a bus promises to fire "
                "declared hooks only (custom names need no promise)"
            )
        for name in sorted(new):
            for r in self._subscribed(name):
                _validate(r, name)
        self._fires |= new

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

        With ``hook``, ``target`` is a callable subscribed to that one name (declared or not).
        Without, ``target`` is an object: each of its methods named as a declared hook is
        subscribed now, and any other method runs when its name is fired with :meth:`call`.
        Methods marked with :func:`loopkit.hooks.default_hook` are skipped.

        ``priority``: higher runs first; equal priorities run in registration order.
        ``every=N`` runs the receiver on the N-th, 2N-th, ... firing of the hook after it
        subscribed; ``once=N`` only on the N-th. The bus counts the firings.

        Raises :class:`HookError` when a receiver of a hook this bus :attr:`fires` requires a
        parameter the hook does not pass; nothing is subscribed then.
        """
        _check_options(priority, every, once)
        if hook is not None:
            if not isinstance(hook, str) or not hook.isidentifier():
                raise ValueError(f"a hook name is an identifier string, got {hook!r}")
            if not callable(target):
                raise TypeError(
                    f"connect({target!r}, {hook!r}): a receiver of one hook must be callable"
                )
            # A bound method's owner is its object, so disconnect(obj) removes it too.
            owner = _owner_of(target)
            receiver = _Receiver(target, owner, hook, priority, every, once)
            _validate(receiver, hook if hook in self._fires else None)
            if hook not in HOOKS:
                _warn_near_miss(hook, receiver.label, stacklevel=3)
            self._add(receiver)
            return Subscription(self, [receiver], None)
        if isinstance(target, type):
            raise TypeError(
                f"connect({target.__name__}) got a class; connect an instance: "
                f"connect({target.__name__}())"
            )
        if inspect.isroutine(target) or isinstance(target, functools.partial):
            raise TypeError(
                f"connect({_describe(t.cast(t.Callable[..., t.Any], target), target)}) needs the "
                "name of the hook to subscribe it to, as in connect(fn, 'on_train_epoch_end')"
            )
        if any(conn.obj is target for conn in self._objects):
            raise ValueError(
                f"this {type(target).__name__} instance is already connected to this bus"
            )
        conn = _Connected(target, priority, every, once)
        for name in _hook_methods(target):
            conn.receivers.append(
                _Receiver(getattr(target, name), target, name, priority, every, once, conn.seq)
            )
        for r in conn.receivers:  # all or nothing: validate before subscribing any
            _validate(r, r.hook if r.hook in self._fires else None)
        self._objects.append(conn)
        for r in conn.receivers:
            self._add(r)
        # Custom names resolved earlier may now have one more receiver.
        self._forget(n for n in self._ordered if n not in HOOKS)
        return Subscription(self, conn.receivers, conn)

    def disconnect(self, target: object) -> None:
        """Remove every subscription of ``target`` (an object, or a callable connected to hooks)."""
        for conn in [conn for conn in self._objects if conn.obj is target]:
            self._remove(conn.receivers, conn)
        for name in list(self._signals):
            doomed = [r for r in self._subscribed(name) if r.owner is target or r.fn == target]
            if doomed:
                self._remove(doomed, None)

    def receivers(self, name: str) -> tuple[c.Callable[..., t.Any], ...]:
        """The callables that :meth:`call` would run for ``name``, in order (filters aside)."""
        return tuple(r.fn for r in self._receivers_of(name))

    def _add(self, receiver: _Receiver) -> None:
        self._signals.signal(receiver.hook).connect(receiver, weak=False)
        self._forget([receiver.hook])

    def _remove(self, receivers: list[_Receiver], conn: _Connected | None) -> None:
        if conn is not None:
            receivers = [*receivers, *(r for r in conn.custom.values() if r is not None)]
            self._objects = [other for other in self._objects if other is not conn]
            self._forget(n for n in self._ordered if n not in HOOKS)
        for r in receivers:
            if r.hook in self._signals:
                self._signals[r.hook].disconnect(r)
        self._forget(r.hook for r in receivers)

    def _forget(self, names: c.Iterable[str]) -> None:
        """Drop what is cached for ``names``; the next call rebuilds it."""
        self.version += 1
        for name in set(names):
            self._ordered.pop(name, None)
            self._dispatchers.pop(name, None)
        for watcher in self.watchers:
            watcher()

    def _subscribed(self, name: str) -> list[_Receiver]:
        if name not in self._signals:
            return []
        return [r for r in self._signals[name].receivers.values() if isinstance(r, _Receiver)]

    def _receivers_of(self, name: str) -> tuple[_Receiver, ...]:
        ordered = self._ordered.get(name)
        if ordered is not None:
            return ordered
        if name not in HOOKS:
            # A custom name: every connected object with a real method of that name runs. Its
            # receiver is prepared once and kept with the object, so filters keep counting.
            for conn in self._objects:
                if name not in conn.custom:
                    found = conn.custom[name] = _resolve_custom(conn, name)
                    if found is not None:
                        self._signals.signal(name).connect(found, weak=False)
        ordered = tuple(sorted(self._subscribed(name), key=lambda r: (-r.priority, r.seq)))
        self._ordered[name] = ordered
        if any(r.every is not None or r.once is not None for r in ordered):
            self._filtered.add(name)
        else:
            self._filtered.discard(name)
        return ordered

    def _dispatcher(self, name: str) -> _Dispatcher | None:
        receivers = self._receivers_of(name)
        dispatch: _Dispatcher | None
        if not receivers:
            dispatch = None
        elif name in self._filtered:
            dispatch = functools.partial(self._call_general, name, ())
        else:
            dispatch = _compile(name, receivers)
        self._dispatchers[name] = dispatch
        return dispatch

    # -- dispatch (hot path) --------------------------------------------------------------------

    def call(self, name: str, /, *args: t.Any, **kwargs: t.Any) -> list[tuple[object, t.Any]]:
        """Run every receiver of ``name``; return ``(owner, result)`` pairs in call order.

        ``owner`` is the connected object (for a function connected to one hook, the function;
        for a bound method, its object). Positional ``args`` are passed to every receiver as
        given; each keyword argument only to receivers whose signature names it (or takes
        ``**kwargs``). A receiver requiring a keyword the call did not pass raises
        :class:`HookError`. Any other exception from a receiver propagates unchanged, with a note
        naming the receiver and the hook.
        """
        if args or _log.tracing:
            return self._call_general(name, args, kwargs)
        try:
            dispatch = self._dispatchers[name]
        except KeyError:
            dispatch = self._dispatcher(name)
        if dispatch is None:
            return []
        return dispatch(kwargs)

    def _call_general(
        self, name: str, args: tuple[t.Any, ...], kwargs: dict[str, t.Any]
    ) -> list[tuple[object, t.Any]]:
        """Dispatch with positional arguments, ``every``/``once`` filters, or tracing on."""
        receivers: c.Sequence[_Receiver] = self._receivers_of(name)
        if name in self._filtered:
            receivers = _open(receivers)
        for r in receivers:  # check every receiver before any runs
            missing = r.needs(len(args), kwargs)
            if missing:
                raise r.missing_error(missing, kwargs, len(args))
        start = time.perf_counter()
        results = []
        for r in receivers:
            try:
                out = r.invoke(args, kwargs)
            except BaseException as err:
                _log.add_note(err, f"raised by {r.label} while handling hook {name!r}")
                raise
            results.append((r.owner, out))
        if _log.tracing:
            elapsed_us = round((time.perf_counter() - start) * 1e6, 1)  # before logger() runs
            _log.logger().debug(
                "hook", hook=name, receivers=[r.label for r in receivers], us=elapsed_us
            )
        return results


# -- helpers ------------------------------------------------------------------------------------


def _owner_of(fn: t.Any) -> object:
    return fn.__self__ if inspect.ismethod(fn) else fn


def _resolve_custom(conn: _Connected, name: str) -> _Receiver | None:
    fn = getattr(conn.obj, name, None)
    if not callable(fn) or is_default_hook(fn):
        return None
    return _Receiver(fn, conn.obj, name, conn.priority, conn.every, conn.once, conn.seq)


def _open(receivers: c.Sequence[_Receiver]) -> list[_Receiver]:
    """Count one firing for each filtered receiver; return those that run on it."""
    out = []
    for r in receivers:
        if r.every is None and r.once is None:
            out.append(r)
            continue
        r.fired += 1
        if (r.every is not None and r.fired % r.every == 0) or r.fired == r.once:
            out.append(r)
    return out


def _check_options(priority: int, every: int | None, once: int | None) -> None:
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise TypeError(f"priority must be an int, got {priority!r}")
    for key, value in (("every", every), ("once", once)):
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 1
        ):
            raise ValueError(f"{key} must be a positive int, got {value!r}")
    if every is not None and once is not None:
        raise ValueError(
            f"pass every= or once=, not both (got every={every}, once={once}); connect twice "
            "for both behaviours"
        )


def _validate(r: _Receiver, fired: str | None) -> None:
    """Reject ``r`` when this bus's owner fires ``fired`` without a parameter ``r`` requires."""
    if fired is None:
        return
    spec = HOOKS[fired]
    missing = r.needs(0, spec.params)
    if missing:
        raise HookError(
            f"{r.label} requires parameter(s) {', '.join(map(repr, missing))}, but the loop "
            f"fires {fired!r} with ({', '.join(spec.params)}) as keywords. Give "
            f"{'it' if len(missing) == 1 else 'them'} a default, or take only parameters "
            "from that list."
        )


def _hook_methods(obj: object) -> list[str]:
    """Names of ``obj``'s methods that subscribe to declared hooks; warns on near-misses."""
    names = []
    for name in dir(obj):
        if name not in HOOKS and not name.startswith("on_"):
            continue
        fn = getattr(obj, name, None)
        if not callable(fn) or is_default_hook(fn):
            continue
        if name in HOOKS:
            names.append(name)
        else:
            _warn_near_miss(name, f"{type(obj).__name__}.{name}", stacklevel=4)
    return names


def _warn_near_miss(name: str, label: str, stacklevel: int) -> None:
    nearest = _nearest_hook(name)
    if nearest is not None:
        warnings.warn(
            f"{label} is not a loopkit hook: did you mean {nearest!r}? As written it runs only "
            f"when user code fires {name!r} by name with call().",
            UserWarning,
            stacklevel=stacklevel,
        )


def _nearest_hook(name: str) -> str | None:
    """The declared hook within edit distance 2 of ``name`` (None when there is none)."""
    best, best_distance = None, 3
    for hook in HOOKS:
        d = _distance(name, hook, 2)
        if d < best_distance:
            best, best_distance = hook, d
    return best


def _distance(a: str, b: str, limit: int) -> int:
    """Levenshtein distance between ``a`` and ``b``; anything above ``limit`` is ``limit + 1``."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        if min(current) > limit:
            return limit + 1
        previous = current
    return min(previous[-1], limit + 1)
