"""The plugin contract, entry-point discovery, and resolution of plugins by name.

A plugin is a class that a distribution registers in the entry-point group ``loopkit.plugins``;
the entry point's name is the name users type (``"bf16-mixed"``, ``"ddp"``, ``"tensorboard"``).
Discovery reads installed metadata only. A plugin's code is imported when it is named, enabled,
or needed by a feature the user asked for, never because it is installed. One plugin failing to
import never stops another from loading.

This module names no plugin package in code. The table :data:`KNOWN` maps first-party names to
the distribution that provides them, for one purpose only: telling a user what to install.
"""

from __future__ import annotations

import collections.abc as c
import functools
import importlib.metadata as metadata
import typing as t
from dataclasses import dataclass

from loopkit import _log

if t.TYPE_CHECKING:
    from loopkit.fabric import Fabric

__all__ = [
    "GROUP",
    "KINDS",
    "KNOWN",
    "Plugin",
    "PluginConflictError",
    "PluginError",
    "PluginInfo",
    "PluginLoadError",
    "PluginNotFoundError",
    "Registry",
    "registry",
]

GROUP = "loopkit.plugins"

#: Slots hold one occupant each; every other plugin is a ``subscriber`` (or a ``logger``).
SLOTS = ("strategy", "precision", "accelerator", "checkpoint_io")
KINDS = (*SLOTS, "logger", "subscriber")

_P = "loopkit-precision"
#: First-party names -> (kind, distribution). Used only for "pip install ..." advice.
KNOWN: c.Mapping[str, tuple[str, str]] = {
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

    A plugin of one kind may also stand for the occupant of another slot under the same name by
    listing it in ``provides`` (a strategy named ``"xla"`` can provide the ``"xla"``
    accelerator).
    """

    kind: t.ClassVar[str] = "subscriber"
    #: The name the registry loaded this plugin under (set on load; may be None for instances).
    plugin_name: t.ClassVar[str | None] = None
    provides: t.ClassVar[c.Mapping[str, c.Callable[[], t.Any]]] = {}

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
    """No installed plugin has the name the user asked for."""


class PluginLoadError(PluginError, ImportError):
    """A plugin's entry point failed to import."""


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
        return KNOWN.get(self.name, (None, ""))[0]


class Registry:
    """The installed plugins of one environment, loaded on demand and cached."""

    def __init__(self, entry_points: c.Iterable[metadata.EntryPoint] | None = None) -> None:
        self._given = entry_points
        self._infos: dict[str, list[tuple[PluginInfo, metadata.EntryPoint]]] | None = None
        self._loaded: dict[str, t.Any] = {}
        self._failed: dict[str, PluginLoadError] = {}

    # -- metadata ---------------------------------------------------------------------------

    def _discover(self) -> dict[str, list[tuple[PluginInfo, metadata.EntryPoint]]]:
        if self._infos is None:
            eps = self._given
            if eps is None:
                eps = metadata.entry_points(group=GROUP)
            infos: dict[str, list[tuple[PluginInfo, metadata.EntryPoint]]] = {}
            for ep in eps:
                dist = getattr(ep, "dist", None)
                dist_name = dist.metadata["Name"] if dist is not None else "<unknown>"
                version = dist.version if dist is not None else "?"
                info = PluginInfo(ep.name, ep.value, dist_name, version)
                claims = infos.setdefault(ep.name, [])
                # One distribution seen twice on sys.path (an editable install next to its
                # build folder) is one claim, not a conflict.
                if all(i.distribution != dist_name for i, _ in claims):
                    claims.append((info, ep))
            self._infos = infos
            if _log.tracing:
                _log.logger().debug("plugins discovered", names=sorted(infos))
        return self._infos

    def infos(self) -> list[PluginInfo]:
        """Every installed plugin (every claim, when two distributions share a name)."""
        return [info for claims in self._discover().values() for info, _ in claims]

    def names(self, kind: str | None = None) -> list[str]:
        """Installed names; with ``kind``, those known (or already loaded) to be of that kind."""
        names = sorted(self._discover())
        if kind is None:
            return names
        return [n for n in names if self._kind_without_loading(n) == kind]

    def _kind_without_loading(self, name: str) -> str | None:
        loaded = self._loaded.get(name)
        if loaded is not None:
            return getattr(loaded, "kind", None)
        return KNOWN.get(name, (None, ""))[0]

    def __contains__(self, name: object) -> bool:
        return name in self._discover()

    # -- loading ----------------------------------------------------------------------------

    def load(self, name: str) -> t.Any:
        """Import and return the object registered as ``name`` (usually a :class:`Plugin`)."""
        if name in self._loaded:
            return self._loaded[name]
        if name in self._failed:
            raise self._failed[name]
        claims = self._discover().get(name)
        if not claims:
            raise self._not_found(name, None)
        if len(claims) > 1:
            listed = " and ".join(f"{i.distribution} {i.version} ({i.value})" for i, _ in claims)
            raise PluginConflictError(
                f"plugin name {name!r} is claimed by {listed}; uninstall one of them"
            )
        info, ep = claims[0]
        try:
            obj = ep.load()
        except Exception as err:  # isolate: one broken plugin must not stop the others
            failure = PluginLoadError(
                f"plugin {name!r} from distribution {info.distribution} {info.version} "
                f"(entry point {info.name} = {info.value}) failed to import: "
                f"{type(err).__name__}: {err}"
            )
            failure.__cause__ = err
            self._failed[name] = failure
            raise failure from err
        if isinstance(obj, type) and issubclass(obj, Plugin) and "plugin_name" not in vars(obj):
            obj.plugin_name = name
        self._loaded[name] = obj
        if _log.tracing:
            _log.logger().debug("plugin loaded", name=name, value=info.value)
        return obj

    def create(self, kind: str, name: str, /, **kwargs: t.Any) -> t.Any:
        """Load ``name`` and instantiate it as the ``kind`` occupant, checking its kind."""
        if name not in self._discover():
            raise self._not_found(name, kind)
        obj = self.load(name)
        obj_kind = getattr(obj, "kind", None)
        if obj_kind != kind:
            provided = getattr(obj, "provides", {}).get(kind)
            if provided is not None:
                return provided(**kwargs)
            raise PluginNotFoundError(
                f"{name!r} is a {obj_kind or 'non-plugin'} plugin, not a {kind}. "
                f"Installed {kind} plugins: {', '.join(self.names(kind)) or 'none'}"
            )
        return obj(**kwargs)

    def _not_found(self, name: str, kind: str | None) -> PluginNotFoundError:
        what = f"{kind} plugin" if kind else "plugin"
        same_kind = self.names(kind) if kind else self.names()
        msg = f"no {what} named {name!r} is installed."
        if same_kind:
            msg += f" Installed {what}s: {', '.join(same_kind)}."
        others = [n for n in self.names() if n not in same_kind and self._kind_without_loading(n) is None]
        if kind and others:
            msg += f" Also installed (kind known once loaded): {', '.join(others)}."
        hint = KNOWN.get(name)
        if hint is not None and (kind is None or hint[0] == kind):
            msg += f" {name!r} is provided by {hint[1]}: pip install {hint[1]}"
        return PluginNotFoundError(msg)

    def status(self) -> list[tuple[PluginInfo, str, str]]:
        """(info, kind, load status) for every installed plugin; loads each one to find out."""
        rows = []
        for info in self.infos():
            try:
                obj = self.load(info.name)
                rows.append((info, str(getattr(obj, "kind", "?")), "ok"))
            except PluginError as err:
                cause = err.__cause__ if isinstance(err, PluginLoadError) else err
                kind = info.known_kind or "?"
                rows.append((info, kind, f"error: {type(cause).__name__}: {cause}"))
        return rows


@functools.cache
def registry() -> Registry:
    """The registry of the running environment (discovered on first use, then cached)."""
    return Registry()
