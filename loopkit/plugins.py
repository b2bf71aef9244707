"""The plugin contract, entry-point discovery, and resolution of plugins by name.

A plugin is a class that a distribution registers in the entry-point group ``loopkit.plugins``;
the entry point's name is the name users type (``"bf16-mixed"``, ``"ddp"``, ``"tensorboard"``).
Discovery reads installed metadata only. A plugin's code is imported when it is named, enabled,
or needed by a feature the user asked for, never because it is installed. One plugin failing to
import never stops another from loading.

This module names no plugin package in code. The table :data:`KNOWN` maps first-party names to
the distribution that provides them, for two purposes only: telling a user what to install, and
listing names by kind without importing them.
"""

from __future__ import annotations

import collections.abc as c
import contextlib
import difflib
import functools
import importlib.metadata as metadata
import time
import typing as t
from dataclasses import dataclass

from loopkit import _log

if t.TYPE_CHECKING:
    from loopkit.fabric import Fabric

__all__ = [
    "GROUP",
    "KINDS",
    "KNOWN",
    "SLOTS",
    "Plugin",
    "PluginConflictError",
    "PluginError",
    "PluginInfo",
    "PluginLoadError",
    "PluginNotFoundError",
    "PluginStatus",
    "Registry",
    "registry",
]

#: The entry-point group every plugin (the kernel's own defaults included) is registered in.
GROUP = "loopkit.plugins"

#: Slots hold one occupant each; every other plugin is a ``logger`` or a ``subscriber``.
SLOTS = ("strategy", "precision", "accelerator", "checkpoint_io")
KINDS = (*SLOTS, "logger", "subscriber")

_P = "loopkit-precision"
#: First-party names -> (kind, distribution): advice on what to install, and kinds by name.
KNOWN: c.Mapping[str, tuple[str, str]] = {
    **{n: ("precision", "loopkit") for n in ("32-true",)},
    **{n: ("strategy", "loopkit") for n in ("single_device",)},
    **{n: ("accelerator", "loopkit") for n in ("cpu", "cuda", "mps")},
    **{n: ("precision", _P) for n in ("64-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true")},
    **{n: ("precision", _P) for n in ("64", "16", "bf16")},
    **{n: ("strategy", "loopkit-ddp") for n in ("ddp", "ddp_spawn", "fsdp")},
    **{n: ("strategy", "loopkit-xla") for n in ("xla", "xla_spmd")},
    "tpu": ("accelerator", "loopkit-xla"),
    "accumulation": ("subscriber", "loopkit-accumulation"),
    "toggling": ("subscriber", "loopkit-toggling"),
    "schedulers": ("subscriber", "loopkit-schedulers"),
    "lr_monitor": ("subscriber", "loopkit-schedulers"),
    **{n: ("logger", "loopkit-logging") for n in ("tensorboard", "csv", "console")},
    "progress_bar": ("subscriber", "loopkit-logging"),
}


class Plugin:
    """Base class of everything the registry loads.

    ``kind`` says which slot the plugin fills (``strategy``, ``precision``, ``accelerator``,
    ``checkpoint_io``), or ``logger``, or ``subscriber`` for a plugin that only listens to hooks
    and wraps phases. A subscriber's methods named like hooks are connected to the host's bus
    when it is attached; :meth:`attach` is where it may also wrap phases
    (:meth:`loopkit.Fabric.wrap_phase`). ``state_dict``/``load_state_dict`` put the plugin's
    own state into checkpoints, under its name.

    ``plugin_name`` is the name the registry created the plugin under; a class that sets it
    itself keeps its own value (aliases such as ``"bf16"`` report the canonical
    ``"bf16-mixed"``). It is None for an instance made without the registry.

    A plugin of one kind may also stand for the occupant of another slot under the same name by
    listing a factory in ``provides`` (a strategy named ``"xla"`` can provide the ``"xla"``
    accelerator).
    """

    kind: t.ClassVar[str] = "subscriber"
    plugin_name: str | None = None
    provides: t.ClassVar[c.Mapping[str, c.Callable[..., t.Any]]] = {}

    def attach(self, host: Fabric) -> None:
        """Called once when the plugin joins ``host``; the default does nothing."""

    def state_dict(self) -> dict[str, t.Any]:
        """The plugin's state to save in a checkpoint; empty by default."""
        return {}

    def load_state_dict(self, state: c.Mapping[str, t.Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


class PluginError(Exception):
    """Base class of the registry's errors."""


class PluginNotFoundError(PluginError, ValueError):
    """No installed plugin has the name the user asked for (of the kind asked for)."""


class PluginLoadError(PluginError, ImportError):
    """A plugin's entry point failed to import, or does not name a plugin class."""


class PluginConflictError(PluginError, ValueError):
    """Two distributions claim the same plugin name."""


@dataclass(frozen=True)
class PluginInfo:
    """What the metadata says about one plugin, before any of its code is imported."""

    name: str
    value: str
    distribution: str
    version: str

    @property
    def known_kind(self) -> str | None:
        """The kind :data:`KNOWN` gives this name, when this distribution is the one it means."""
        known = KNOWN.get(self.name)
        if known is None or _normalize(known[1]) != _normalize(self.distribution):
            return None
        return known[0]


class PluginStatus(t.NamedTuple):
    """One row of :meth:`Registry.status`: the metadata, the kind, and ``"ok"`` or the error."""

    info: PluginInfo
    kind: str
    loads: str


class Registry:
    """The installed plugins of one environment, loaded on demand and cached.

    :param entry_points: the entry points to use instead of the environment's (``None``: those
        of group :data:`GROUP`, read when first needed).
    """

    def __init__(self, entry_points: c.Iterable[metadata.EntryPoint] | None = None) -> None:
        self._given = entry_points
        self._claims: dict[str, list[tuple[PluginInfo, metadata.EntryPoint]]] | None = None
        self._loaded: dict[str, type] = {}
        self._failed: dict[str, PluginError] = {}

    # -- metadata ---------------------------------------------------------------------------

    def _discover(self) -> dict[str, list[tuple[PluginInfo, metadata.EntryPoint]]]:
        if self._claims is None:
            start = time.perf_counter()
            eps = self._given if self._given is not None else metadata.entry_points(group=GROUP)
            claims: dict[str, list[tuple[PluginInfo, metadata.EntryPoint]]] = {}
            for ep in eps:
                dist = getattr(ep, "dist", None)
                dist_name = dist.metadata["Name"] if dist is not None else "<unknown>"
                version = dist.version if dist is not None else "?"
                info = PluginInfo(ep.name, ep.value, dist_name, version)
                found = claims.setdefault(ep.name, [])
                # One distribution seen twice on sys.path (an install shadowed by another of
                # the same project) is one claim, not a conflict: the first on sys.path wins.
                if all(_normalize(i.distribution) != _normalize(dist_name) for i, _ in found):
                    found.append((info, ep))
            self._claims = claims
            if _log.tracing:
                elapsed_ms = round((time.perf_counter() - start) * 1e3, 2)
                _log.logger().debug("plugins discovered", names=sorted(claims), ms=elapsed_ms)
        return self._claims

    def infos(self) -> list[PluginInfo]:
        """Every installed plugin (every claim, when two distributions share a name)."""
        return [info for claims in self._discover().values() for info, _ in claims]

    def names(self, kind: str | None = None, *, load: bool = False) -> list[str]:
        """Installed names, sorted; with ``kind``, only those of that kind.

        A name's kind is known without importing anything for the kernel's and first-party
        plugins (:data:`KNOWN`) and for plugins already loaded. With ``load=True`` the others
        are loaded to find out (plugins that fail to load are left out).
        """
        names = sorted(self._discover())
        if kind is None:
            return names
        _check_kind(kind)
        return [n for n in names if self._kind_of(n, load=load) == kind]

    def _kind_of(self, name: str, *, load: bool) -> str | None:
        if name in self._loaded:
            return str(getattr(self._loaded[name], "kind", None))
        claims = self._discover().get(name, [])
        if len(claims) == 1 and claims[0][0].known_kind is not None:
            return claims[0][0].known_kind
        if load and name not in self._failed:
            try:
                return str(getattr(self.load(name), "kind", None))
            except PluginError:
                return None
        return None

    def __contains__(self, name: object) -> bool:
        """Whether a plugin of that name is installed (reads metadata only)."""
        return name in self._discover()

    def __iter__(self) -> c.Iterator[str]:
        return iter(self.names())

    # -- loading ----------------------------------------------------------------------------

    def load(self, name: str) -> type:
        """Import and return the plugin class registered as ``name``.

        Raises :class:`PluginNotFoundError` when no installed plugin has that name,
        :class:`PluginConflictError` when two distributions claim it, and
        :class:`PluginLoadError` when its import fails or it names no plugin class. A failure
        is remembered: later calls raise it again without retrying the import.
        """
        if name in self._loaded:
            return self._loaded[name]
        if name in self._failed:
            raise self._failed[name]
        claims = self._discover().get(name)
        if not claims:
            raise self._not_found(name, None)
        if len(claims) > 1:
            listed = " and ".join(
                f"distribution {i.distribution} {i.version} ({i.name} = {i.value})"
                for i, _ in claims
            )
            failure: PluginError = PluginConflictError(
                f"plugin name {name!r} is claimed by {listed}; uninstall one of them"
            )
            self._failed[name] = failure
            raise failure
        info, ep = claims[0]
        where = (
            f"plugin {name!r} from distribution {info.distribution} {info.version} "
            f"(entry point {info.name} = {info.value} in group {GROUP})"
        )
        start = time.perf_counter()
        try:
            obj = ep.load()
        except Exception as err:  # isolate: one broken plugin must not stop the others
            failure = PluginLoadError(f"{where} failed to import: {type(err).__name__}: {err}")
            failure.__cause__ = err
            self._failed[name] = failure
            raise failure from err
        kind = getattr(obj, "kind", None)
        if not isinstance(obj, type) or kind not in KINDS:
            failure = PluginLoadError(
                f"{where} is not a plugin: it resolves to {obj!r}, but a plugin entry point must "
                f"name a class whose 'kind' is one of {', '.join(KINDS)} (subclass "
                "loopkit.plugins.Plugin)"
            )
            self._failed[name] = failure
            raise failure
        self._loaded[name] = obj
        if _log.tracing:
            elapsed_ms = round((time.perf_counter() - start) * 1e3, 2)
            _log.logger().debug(
                "plugin loaded",
                name=name,
                kind=kind,
                value=info.value,
                distribution=info.distribution,
                ms=elapsed_ms,
            )
        return obj

    def create(self, kind: str, name: str, /, **kwargs: t.Any) -> t.Any:
        """Load ``name`` and instantiate it, with ``kwargs``, as the ``kind`` occupant.

        A plugin of another kind that ``provides`` ``kind`` is asked for its factory instead.
        Raises :class:`PluginNotFoundError` (listing the installed names of that kind) when no
        plugin of that name and kind is installed.
        """
        _check_kind(kind)
        if name not in self._discover():
            raise self._not_found(name, kind)
        cls = self.load(name)
        cls_kind = getattr(cls, "kind", None)
        if cls_kind == kind:
            factory: c.Callable[..., t.Any] = cls
        else:
            provided = getattr(cls, "provides", {}).get(kind)
            if provided is None:
                installed = ", ".join(self.names(kind, load=True)) or "none"
                raise PluginNotFoundError(
                    f"{name!r} is a {cls_kind} plugin, not a {kind}. Installed {kind} plugins: "
                    f"{installed}"
                )
            factory = provided
        try:
            instance = factory(**kwargs)
        except Exception as err:
            info = self._discover()[name][0][0]
            _log.add_note(
                err,
                f"while creating {kind} plugin {name!r} ({info.value} from {info.distribution})",
            )
            raise
        if getattr(instance, "plugin_name", None) is None:  # a class's own name wins
            # A class with __slots__ and no room for the name simply goes without it.
            with contextlib.suppress(AttributeError):
                instance.plugin_name = name
        if _log.tracing:
            _log.logger().debug(
                "plugin created", kind=kind, name=name, type=type(instance).__qualname__,
                kwargs=sorted(kwargs),
            )  # fmt: skip
        return instance

    def resolve(self, kind: str, value: t.Any, /, **kwargs: t.Any) -> t.Any:
        """A name is passed to :meth:`create`; an instance is returned as is, its kind checked."""
        if isinstance(value, str):
            return self.create(kind, value, **kwargs)
        _check_kind(kind)
        value_kind = getattr(value, "kind", None)
        if value_kind != kind:
            raise TypeError(
                f"{value!r} was passed as the {kind}, but its kind is {value_kind!r}; pass a "
                f"{kind} plugin instance or the name of one ({', '.join(self.names(kind))})"
            )
        return value

    def _not_found(self, name: str, kind: str | None) -> PluginNotFoundError:
        what = f"{kind} plugin" if kind else "plugin"
        candidates = self.names(kind, load=True) if kind else self.names()
        msg = f"no {what} named {name!r} is installed."
        close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
        if close:
            msg += f" Did you mean {close[0]!r}?"
        msg += f" Installed {what}s: {', '.join(candidates) or 'none'}."
        broken = sorted(self._failed)
        if broken:
            msg += f" Installed but failing to load: {', '.join(broken)}."
        hint = KNOWN.get(name)
        if hint is not None and (kind is None or hint[0] == kind) and hint[1] != "loopkit":
            msg += f" {name!r} is provided by the {hint[1]} distribution: pip install {hint[1]}"
        return PluginNotFoundError(msg)

    def status(self) -> list[PluginStatus]:
        """Every installed plugin with its kind and whether it loads; loads each one."""
        rows = []
        for info in self.infos():
            try:
                cls = self.load(info.name)
            except PluginError as err:
                cause = err.__cause__ if err.__cause__ is not None else err
                loads = f"error: {type(cause).__name__}: {cause}"
                rows.append(PluginStatus(info, info.known_kind or "?", loads))
            else:
                rows.append(PluginStatus(info, str(getattr(cls, "kind", "?")), "ok"))
        return rows


def _normalize(distribution: str) -> str:
    return distribution.lower().replace("_", "-").replace(".", "-")


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown plugin kind {kind!r}; kinds are {', '.join(KINDS)}")


@functools.cache
def registry() -> Registry:
    """The registry of the running environment (discovered on first use, then cached).

    ``registry.cache_clear()`` forgets it, so that plugins installed since are found.
    """
    return Registry()
