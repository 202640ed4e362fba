"""Load a config file (native TOML or ossec.conf), validate it whole, and turn every error into
one message naming the file, the block, the key and the fix. A config with an error never starts
a half-configured service: load_config either returns a complete Config or raises ConfigError.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from dfir_ar.config.models import (
    ActiveResponseConfig,
    CommandConfig,
    Config,
    EvidenceConfig,
    GlobalConfig,
    Matching,
    SourceConfig,
)
from dfir_ar.config.ossec import parse_ossec_conf
from dfir_ar.errors import ConfigError, DfirArError

DEFAULT_CONFIG = Path("/etc/dfir-ar/dfir-ar.toml")

_BLOCK_MODELS: dict[str, type[BaseModel]] = {
    "global": GlobalConfig,
    "command": CommandConfig,
    "active_response": ActiveResponseConfig,
    "source": SourceConfig,
    "evidence": EvidenceConfig,
}
_ARRAY_BLOCKS = {"command", "active_response", "source"}


@dataclass(frozen=True)
class LoadedConfig:
    config: Config
    path: Path
    warnings: tuple[str, ...] = field(default_factory=tuple)


def config_path(explicit: str | Path | None) -> Path:
    """``-c`` wins, then ``$DFIR_AR_CONFIG``, then /etc/dfir-ar/dfir-ar.toml."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("DFIR_AR_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG


def suggest(word: str, choices: Sequence[str]) -> str:
    """``; did you mean "x"?`` or nothing."""
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f'; did you mean "{match[0]}"?' if match else ""


def _where(path: Path, loc: Sequence[int | str]) -> str:
    """Turn a pydantic error location into ``file, [[block]] #n, key``."""
    parts = [str(path)]
    items = list(loc)
    if items and items[0] == "global_":
        items[0] = "global"
    if not items:
        return parts[0]
    block = str(items[0])
    rest = items[1:]
    if block in _ARRAY_BLOCKS and rest and isinstance(rest[0], int):
        parts.append(f"[[{block}]] #{rest[0] + 1}")
        rest = rest[1:]
    elif block in ("responders", "collectors") and rest:
        parts.append(f"[{block}.{rest[0]}]")
        rest = rest[1:]
    elif block in _BLOCK_MODELS:
        parts.append(f"[{block}]")
    else:
        parts.append(block)
    if rest:
        parts.append(".".join(str(r) for r in rest))
    return ", ".join(parts)


def _fields(loc: Sequence[int | str]) -> list[str]:
    block = "global" if loc and loc[0] == "global_" else (str(loc[0]) if loc else "")
    model = _BLOCK_MODELS.get(block)
    if model is None:
        return [*_BLOCK_MODELS, "responders", "collectors"] if len(loc) <= 1 else []
    return list(model.model_fields)


def format_validation_error(path: Path, exc: ValidationError, raw: dict[str, Any]) -> str:
    lines = []
    for err in exc.errors():
        loc = err["loc"]
        where = _where(path, loc)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            key = str(loc[-1])
            msg = f"unknown key {key!r}{suggest(key, _fields(loc[:-1] if len(loc) > 1 else ()))}"
            if len(loc) == 1:
                msg = f"unknown block [{key}]{suggest(key, _fields(()))}"
        elif err["type"] in ("literal_error", "enum") and isinstance(err.get("input"), str):
            expected = err.get("ctx", {}).get("expected", "")
            choices = [c.strip().strip("'\"") for c in str(expected).replace(" or ", ",").split(",")]
            msg = f"{msg}{suggest(err['input'], choices)}"
        value = err.get("input")
        shown = f" = {value!r}" if isinstance(value, str | int | float) and len(loc) > 1 else ""
        lines.append(f"{where}{shown}: {msg}")
    return "\n".join(lines)


def _read_raw(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such file; pass -c FILE or set DFIR_AR_CONFIG "
            "(examples/local.toml is a starting point)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: byte {exc.start} is not UTF-8; save the file as UTF-8") from None
    if path.suffix in (".conf", ".xml") or text.lstrip().startswith("<"):
        return parse_ossec_conf(path, text)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def load_config(
    path: str | Path, *, check_plugins: bool = True, overrides: dict[str, Any] | None = None
) -> LoadedConfig:
    """Read, validate and cross-check ``path``. Raises ConfigError with every problem found."""
    path = Path(path)
    raw = _read_raw(path)
    if overrides:
        for block, values in overrides.items():
            raw.setdefault(block, {}).update(values)
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(path, exc, raw)) from None
    warnings: list[str] = []
    errors: list[str] = []
    config = _cross_check(path, config, errors, warnings, check_plugins)
    if errors:
        raise ConfigError("\n".join(errors))
    return LoadedConfig(config=config, path=path, warnings=tuple(warnings))


def _cross_check(
    path: Path, config: Config, errors: list[str], warnings: list[str], check_plugins: bool
) -> Config:
    from dfir_ar.registry import load_registry

    name = str(path)
    registry = load_registry() if check_plugins else None
    seen: set[str] = set()
    commands: list[CommandConfig] = []
    for i, cmd in enumerate(config.command, 1):
        commands.append(cmd)
        where = f"{name}, [[command]] #{i} ({cmd.name})"
        if cmd.name in seen:
            errors.append(f"{where}, name: defined twice; command names must be unique")
        seen.add(cmd.name)
        if registry is None:
            continue
        info = registry.get(cmd.executable)
        if info is not None:
            if not info.available:
                errors.append(
                    f'{where}, executable = "{cmd.executable}": the {info.kind} is unavailable '
                    f"here: {info.error}"
                )
                continue
            if not cmd.expect and info.cls is not None and info.cls.expects:
                # Wazuh >= 4.2 ignores <expect>: the plug-in declares what it needs.
                commands[-1] = cmd.model_copy(
                    update={"expect": tuple(str(a) for a in info.cls.expects)}
                )
            if info.kind == "collector" and info.cls is not None:
                from dfir_ar.collector import Collector

                assert issubclass(info.cls, Collector)
                try:
                    info.cls.parse_options(cmd.extra_args)
                except DfirArError as exc:
                    errors.append(f"{where}, extra_args: {exc}")
            continue
        script = config.global_.active_response_dir / cmd.executable
        if not script.is_file():
            plugins = [p.name for p in registry.all()]
            errors.append(
                f'{where}, executable = "{cmd.executable}": no plug-in with that name and no file '
                f"{script}{suggest(cmd.executable, plugins)}"
            )
    config = config.model_copy(update={"command": tuple(commands)})
    names = [c.name for c in config.command]
    fixed_ars = []
    for i, binding in enumerate(config.active_response, 1):
        ar = binding
        where = f"{name}, [[active_response]] #{i}"
        bound = config.command_named(ar.command)
        if bound is None:
            errors.append(
                f'{where}, command = "{ar.command}": no [[command]] with that name'
                f"{suggest(ar.command, names)}"
            )
            fixed_ars.append(ar)
            continue
        if ar.timeout and not bound.timeout_allowed:
            if config.global_.matching is Matching.OSSEC:
                errors.append(
                    f"{where}, timeout: command {bound.name!r} has timeout_allowed = false; "
                    "set timeout_allowed = true on the command or remove the timeout"
                )
            else:
                warnings.append(
                    f"{where}, timeout: command {bound.name!r} has timeout_allowed = false; "
                    "the timeout is ignored (Wazuh behaviour)"
                )
                ar = ar.model_copy(update={"timeout": None})
        if not ar.apply_white_list and bound.expects_srcip and registry is not None:
            info = registry.get(bound.executable)
            if info is None or info.kind == "responder":
                errors.append(
                    f"{where}, apply_white_list = false: command {bound.name!r} contains by srcip; "
                    "the white list can only be waived for collectors and non-IP responses"
                )
        fixed_ars.append(ar)
    if registry is not None:
        # Validate the settings of every plug-in a command uses, with an empty table when the
        # config has none: a collector that needs settings (yara's rules) fails here, not at
        # alert time.
        used = {c.executable for c in config.command}
        for kind, given in (("responders", config.responders), ("collectors", config.collectors)):
            tables = dict(given)
            for plugin in sorted(used):
                info = registry.get(plugin)
                if info is not None and info.kind == kind[:-1] and info.available:
                    tables.setdefault(plugin, {})
            for plugin, table in tables.items():
                info = registry.get(plugin)
                if info is None or info.kind != kind[:-1]:
                    known = [p.name for p in registry.all() if p.kind == kind[:-1]]
                    errors.append(
                        f"{name}, [{kind}.{plugin}]: no {kind[:-1]} named {plugin!r}"
                        f"{suggest(plugin, known)}"
                    )
                    continue
                if info.cls is None:
                    continue
                model = getattr(info.cls, "Options" if kind == "responders" else "Settings")
                try:
                    model.model_validate(table)
                except ValidationError as exc:
                    for err in exc.errors():
                        key = ".".join(str(x) for x in err["loc"])
                        msg = err["msg"].removeprefix("Value error, ")
                        if err["type"] == "extra_forbidden":
                            msg = f"unknown key{suggest(key, list(model.model_fields))}"
                        if plugin not in given:
                            msg += f" (add a [{kind}.{plugin}] table to the config)"
                        errors.append(f"{name}, [{kind}.{plugin}], {key}: {msg}")
        _check_keys(name, config, errors)
    return config.model_copy(update={"active_response": tuple(fixed_ars)})


def _check_keys(name: str, config: Config, errors: list[str]) -> None:
    """The evidence keys must load now: a signing key that is missing or not ed25519 would
    otherwise fail every collection, during an incident, instead of the start."""
    from dfir_ar.evidence.signing import load_private_key, load_public_key

    ev = config.evidence
    if ev.signing_key is not None:
        try:
            load_private_key(ev.signing_key)
        except DfirArError as exc:
            errors.append(f"{name}, [evidence], signing_key: {_without_key_name(exc)}")
    if ev.verify_key is not None:
        try:
            load_public_key(ev.verify_key)
        except DfirArError as exc:
            errors.append(f"{name}, [evidence], verify_key: {_without_key_name(exc)}")


def _without_key_name(exc: Exception) -> str:
    # "evidence.signing_key /k: cannot read (...)" -> "/k: cannot read (...)": the caller names
    # the block and key.
    text = str(exc)
    for prefix in ("evidence.signing_key ", "public key "):
        text = text.removeprefix(prefix)
    return text
