"""Where settings values come from besides the code: the TOML file and ``HOTSWAP_*`` variables.

Why not pydantic-settings: importing it costs about 50 ms (asyncio, argparse, dotenv, its cloud
secret providers), a third of ``hotswap --help``'s whole start-up, and every command loads the
settings before it can say that an input is wrong (issue "a CLI that answers at once": an input
error may cost at most 1.5x ``--help``). hotswap needs two sources, read here with the rules
pydantic-settings applies to them:

- the TOML file: ``HOTSWAP_CONFIG``, else ``hotswap.toml`` in the working directory (optional);
- environment variables ``HOTSWAP_<FIELD>``, any case; ``__`` nests (``HOTSWAP_TRAINING__EPOCHS=4``);
  a value for a list, dict or section is JSON (``HOTSWAP_THRESHOLDS__METRICS='["map"]'``), other
  values are strings that pydantic converts. Variables that name no settings field
  (``HOTSWAP_CONFIG``, test hooks) are not settings and are ignored.

Priority, lowest first: the field defaults, the file, the environment, keyword arguments. Sections
merge key by key (a file's ``[training]`` and ``HOTSWAP_TRAINING__LR`` both apply).
"""

from __future__ import annotations

import json
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

ENV_PREFIX = "hotswap_"
NESTING = "__"


class SettingsFileError(ValueError):
    """A settings file named explicitly is missing, unreadable or not valid TOML."""


class SettingsEnvError(ValueError):
    """A ``HOTSWAP_*`` variable's value cannot be read (a list or section that is not JSON)."""


def config_file() -> Path:
    """The settings file's path (it may not exist)."""
    return Path(os.environ.get("HOTSWAP_CONFIG", "hotswap.toml"))


def read_config_file() -> dict[str, Any]:
    """The settings file's contents, after checking it; a file named by ``HOTSWAP_CONFIG`` must exist.

    Silently falling back to the defaults when the user named a file would train on the wrong data
    (the bundled digits instead of theirs), so a named file that is missing is an error; the
    implicit ``hotswap.toml`` is optional. A TOML syntax error names the file, line and column.
    """
    import tomllib

    path = config_file()
    if not path.exists():
        if "HOTSWAP_CONFIG" in os.environ:
            raise SettingsFileError(
                f"settings file {path} (HOTSWAP_CONFIG) does not exist; fix the path or unset HOTSWAP_CONFIG"
            )
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise SettingsFileError(f"settings file {path} is not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsFileError(f"settings file {path} cannot be read: {exc}") from None


def read_environment(model: type[BaseModel], environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The values ``HOTSWAP_*`` variables give ``model``'s fields, nested as the fields are."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    nested: list[tuple[str, list[str], str]] = []
    for name, raw in environ.items():
        key = name.lower()
        if not key.startswith(ENV_PREFIX):
            continue
        field, *path = key[len(ENV_PREFIX) :].split(NESTING)
        if field not in model.model_fields:
            continue
        if path:
            nested.append((name, [field, *path], raw))
        else:
            values[field] = _decode(name, model.model_fields[field].annotation, raw)
    for name, path, raw in sorted(nested):  # sorted: the same variables give the same result
        _place(values, name, model, path, raw)
    return values


def merge(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """The layers merged, later ones winning; sections (dicts) merge key by key."""
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
                merged[key] = merge(merged[key], value)
            else:
                merged[key] = dict(value) if isinstance(value, Mapping) else value
    return merged


def _place(values: dict[str, Any], name: str, model: type[BaseModel], path: list[str], raw: str) -> None:
    """Put a nested variable's value at its path, decoded as the field it lands on wants."""
    target: dict[str, Any] = values
    annotation: Any = model
    for key in path[:-1]:
        annotation = _field_annotation(annotation, key)
        child = target.setdefault(key, {})
        if not isinstance(child, dict):  # HOTSWAP_X='{...}' was not a section: let pydantic say so
            return
        target = child
    target[path[-1]] = _decode(name, _field_annotation(annotation, path[-1]), raw)


def _field_annotation(annotation: Any, key: str) -> Any:
    """The annotation of field ``key`` of a section (None when it is not a known field)."""
    section = _section_model(annotation)
    if section is None or key not in section.model_fields:
        return None
    return section.model_fields[key].annotation


def _section_model(annotation: Any) -> type[BaseModel] | None:
    candidates = _union_members(annotation)
    return next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)


def _union_members(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return tuple(a for a in typing.get_args(annotation) if a is not type(None))
    return (annotation,)


def _is_complex(annotation: Any) -> bool:
    """Whether a field's value is a list, dict, set, tuple or section (given as JSON)."""
    for member in _union_members(annotation):
        origin = typing.get_origin(member) or member
        if isinstance(origin, type) and (
            issubclass(origin, BaseModel) or issubclass(origin, list | dict | set | frozenset | tuple)
        ):
            return True
    return False


def _decode(name: str, annotation: Any, raw: str) -> Any:
    if annotation is None or not _is_complex(annotation) or not raw:
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SettingsEnvError(f"{name}: not valid JSON ({exc.msg} at character {exc.pos})") from None
