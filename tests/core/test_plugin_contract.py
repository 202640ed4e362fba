"""One test over every registered plug-in: it loads, is available here, and describes itself."""

from __future__ import annotations

import inspect

import pytest

from dfir_ar.collector import Collector
from dfir_ar.registry import load_registry
from dfir_ar.responder import Arg, Responder

REGISTRY = load_registry()
ALL = REGISTRY.all()

EXPECTED = {
    "host-deny", "firewall-drop", "route-null", "disable-account",
    "pcap", "processes", "yara", "memory",
}


def test_every_built_in_is_registered() -> None:
    assert {p.name for p in ALL} >= EXPECTED


@pytest.mark.parametrize("info", ALL, ids=lambda p: p.name)
def test_plugin_describes_itself(info: object) -> None:
    from dfir_ar.registry import PluginInfo

    assert isinstance(info, PluginInfo)
    assert info.cls is not None, info.error
    cls = info.cls
    assert cls.name == info.name
    doc = inspect.getdoc(cls)
    assert doc and len(doc.splitlines()[0]) > 10, "a one-line summary for `dfir-ar plugins`"
    assert all(isinstance(a, Arg) for a in cls.expects)
    if issubclass(cls, Responder):
        for method in ("key", "add", "delete"):
            assert getattr(cls, method) is not getattr(Responder, method)
        hints = inspect.get_annotations(cls.add, eval_str=True)
        assert "request" in hints and "return" in hints
    else:
        assert issubclass(cls, Collector)
        assert cls.collect is not Collector.collect
        for spec in cls.option_specs:
            assert spec.help, f"--{spec.name} needs help text for `dfir-ar plugins show`"


@pytest.mark.parametrize("info", ALL, ids=lambda p: p.name)
def test_plugin_is_available_here(info: object) -> None:
    from dfir_ar.registry import PluginInfo

    assert isinstance(info, PluginInfo)
    assert info.available, f"{info.name}: {info.error}"
