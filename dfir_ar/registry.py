"""Find responders and collectors through entry points; keep failures instead of crashing, so
`dfir-ar plugins` can say what is unavailable and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import EntryPoint, entry_points

from dfir_ar.collector import Collector
from dfir_ar.errors import PluginUnavailable
from dfir_ar.responder import Responder

RESPONDERS = "dfir_ar.responders"
COLLECTORS = "dfir_ar.collectors"


@dataclass(frozen=True)
class PluginInfo:
    name: str
    kind: str  # "responder" | "collector"
    target: str  # module:attr
    cls: type[Responder] | type[Collector] | None
    error: str = ""
    """Why it is unavailable: an import failure or check_compatible()'s message."""

    @property
    def available(self) -> bool:
        return self.cls is not None and not self.error


@dataclass
class Registry:
    responders: dict[str, PluginInfo] = field(default_factory=dict)
    collectors: dict[str, PluginInfo] = field(default_factory=dict)

    def get(self, name: str) -> PluginInfo | None:
        return self.responders.get(name) or self.collectors.get(name)

    def all(self) -> list[PluginInfo]:
        return sorted([*self.responders.values(), *self.collectors.values()], key=lambda p: p.name)

    def responder(self, name: str) -> type[Responder]:
        info = self.responders.get(name)
        if info is None:
            raise PluginUnavailable(f"no responder named {name!r}")
        if info.cls is None or info.error:
            raise PluginUnavailable(f"responder {name!r} is unavailable: {info.error}")
        assert issubclass(info.cls, Responder)
        return info.cls

    def collector(self, name: str) -> type[Collector]:
        info = self.collectors.get(name)
        if info is None:
            raise PluginUnavailable(f"no collector named {name!r}")
        if info.cls is None or info.error:
            raise PluginUnavailable(f"collector {name!r} is unavailable: {info.error}")
        assert issubclass(info.cls, Collector)
        return info.cls


def _info(ep: EntryPoint, kind: str, base: type[Responder] | type[Collector]) -> PluginInfo:
    try:
        cls = ep.load()
    except Exception as exc:  # noqa: BLE001 - a broken plug-in must not take the engine down
        return PluginInfo(ep.name, kind, ep.value, None, f"import failed: {exc}")
    if not (isinstance(cls, type) and issubclass(cls, base)):
        return PluginInfo(
            ep.name, kind, ep.value, None, f"{ep.value} is not a {base.__name__} subclass"
        )
    plugin: type[Responder] | type[Collector] = cls
    error = ""
    try:
        plugin.check_compatible()
    except PluginUnavailable as exc:
        error = str(exc)
    return PluginInfo(ep.name, kind, ep.value, plugin, error)


def _load(
    group: str, kind: str, base: type[Responder] | type[Collector]
) -> dict[str, PluginInfo]:
    return {ep.name: _info(ep, kind, base) for ep in entry_points(group=group)}


def plugin_names() -> list[str]:
    """Every registered plug-in name, without importing any plug-in."""
    return [ep.name for group in (RESPONDERS, COLLECTORS) for ep in entry_points(group=group)]


def load_only(name: str) -> Registry:
    """A registry holding just ``name`` (empty if unknown): importing one plug-in instead of all
    keeps a one-shot process such as ``dfir-ar wazuh-ar`` fast."""
    for ep in entry_points(group=RESPONDERS):
        if ep.name == name:
            return Registry(responders={name: _info(ep, "responder", Responder)})
    for ep in entry_points(group=COLLECTORS):
        if ep.name == name:
            return Registry(collectors={name: _info(ep, "collector", Collector)})
    return Registry()


@cache
def load_registry() -> Registry:
    return Registry(
        responders=_load(RESPONDERS, "responder", Responder),
        collectors=_load(COLLECTORS, "collector", Collector),
    )
