"""`dfir-ar plugins`: what is registered, what is unavailable and why; `plugins show NAME`."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import click
from pydantic import BaseModel

from dfir_ar.cli.common import json_option, print_json, print_table
from dfir_ar.collector import Collector
from dfir_ar.config.load import suggest
from dfir_ar.errors import UsageError
from dfir_ar.registry import PluginInfo, load_registry
from dfir_ar.responder import Responder


def _summary(info: PluginInfo) -> str:
    doc = inspect.getdoc(info.cls) if info.cls is not None else None
    return doc.splitlines()[0] if doc else ""


def _settings(model: type[BaseModel]) -> list[dict[str, Any]]:
    out = []
    for name, field in model.model_fields.items():
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        if isinstance(default, Path):
            default = str(default)
        elif isinstance(default, tuple) and all(isinstance(d, Path) for d in default):
            default = [str(d) for d in default]
        type_name = str(field.annotation).replace("typing.", "").replace("pathlib.", "")
        out.append(
            {
                "name": name,
                "type": getattr(field.annotation, "__name__", type_name) if not
                str(field.annotation).startswith("typing.") else type_name,
                "default": default,
                "help": field.description or "",
            }
        )
    return out


def describe(info: PluginInfo) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": info.name,
        "kind": info.kind,
        "target": info.target,
        "available": info.available,
        "error": info.error,
        "summary": _summary(info),
    }
    cls = info.cls
    if cls is None:
        return data
    data["version"] = cls.version
    data["doc"] = inspect.getdoc(cls) or ""
    data["expects"] = [str(a) for a in cls.expects]
    if issubclass(cls, Responder):
        data["supports_timeout"] = cls.supports_timeout
        data["settings"] = _settings(cls.Options)
    elif issubclass(cls, Collector):
        data["default_duration"] = cls.default_duration
        data["options"] = [
            {"name": f"--{s.name}", "type": s.type.__name__, "default": s.default, "help": s.help}
            for s in cls.option_specs
        ]
        data["settings"] = _settings(cls.Settings)
    return data


@click.group(invoke_without_command=True)
@json_option
@click.pass_context
def plugins(ctx: click.Context, as_json: bool) -> None:
    """List responders and collectors, whether each can run here, and why not.

    `dfir-ar plugins show NAME` prints one plug-in's arguments and options.
    """
    if ctx.invoked_subcommand is not None:
        return
    infos = load_registry().all()
    if as_json:
        print_json([describe(i) for i in infos])
        return
    rows = [
        (
            i.name,
            i.kind,
            "yes" if i.available else "no",
            ",".join(str(a) for a in i.cls.expects) if i.cls else "",
            i.error or _summary(i),
        )
        for i in infos
    ]
    print_table(("NAME", "KIND", "AVAILABLE", "EXPECTS", "SUMMARY / WHY UNAVAILABLE"), rows,
                whole=("NAME",))


@plugins.command()
@click.argument("name")
@json_option
def show(name: str, as_json: bool) -> None:
    """Show one plug-in: what it does, its arguments, its extra_args options and settings."""
    registry = load_registry()
    info = registry.get(name)
    if info is None:
        raise UsageError(f"no plug-in named {name!r}{suggest(name, [p.name for p in registry.all()])}")
    data = describe(info)
    if as_json:
        print_json(data)
        return
    click.echo(f"{info.name} ({info.kind}, {info.target})")
    click.echo(f"available: {'yes' if info.available else 'no — ' + info.error}")
    if data.get("doc"):
        click.echo("")
        click.echo(data["doc"])
    if data.get("expects"):
        click.echo(f"\nexpects: {', '.join(data['expects'])}")
    if "supports_timeout" in data:
        click.echo(f"supports timeout: {'yes' if data['supports_timeout'] else 'no'}")
    if data.get("options"):
        click.echo("\noptions (in the command's extra_args):")
        for opt in data["options"]:
            click.echo(f"  {opt['name']} {opt['type']} (default {opt['default']!r}): {opt['help']}")
    if data.get("settings"):
        section = "responders" if info.kind == "responder" else "collectors"
        click.echo(f"\nsettings ([{section}.{info.name}] in the config):")
        for s in data["settings"]:
            help_text = f": {s['help']}" if s["help"] else ""
            click.echo(f"  {s['name']} {s['type']} (default {s['default']!r}){help_text}")
