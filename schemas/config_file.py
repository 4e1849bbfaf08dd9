"""Where a service's settings come from, and how they are shown back.

Precedence, lowest first: defaults < config file < ARES_* environment variables < command-line
flags (passed to the settings class as keyword arguments). The config file is named by the
``--config`` flag or the ``ARES_CONFIG`` variable; TOML, YAML or JSON by its suffix. Its keys are
the settings' field names, with the MQTT settings in an ``[mqtt]`` table::

    rounds = 20
    policy = "ares"

    [mqtt]
    url = "mqtts://broker.lan:8883"
    username = "ares-edge"
    password_file = "/run/credentials/ares-edge.service/mqtt-password"
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from pathlib import Path, PurePath
from typing import Any, TypeVar

from pydantic import BaseModel, SecretStr, ValidationError
from pydantic_settings import (
    BaseSettings,
    JsonConfigSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)

from schemas.documents import error_text
from schemas.errors import AresError

CONFIG_ENV = "ARES_CONFIG"
ENV_PREFIX = "ARES_"
MASK = "********"
NESTED = ("mqtt",)  # settings that are tables of their own in the file ([mqtt])

S = TypeVar("S", bound=BaseSettings)

# The file named by --config while one settings object is built (None: fall back to ARES_CONFIG).
_config_file: ContextVar[Path | None] = ContextVar("ares_config_file", default=None)
# False while building settings for a process started without ARES_CONFIG (ignoring_config_env).
_config_env: ContextVar[bool] = ContextVar("ares_config_env", default=True)


class ConfigFileError(AresError, ValueError):
    """The config file is missing, unreadable or not of a known format."""


def config_file_path(explicit: Path | None = None) -> Path | None:
    """The config file in effect: the flag's, else ``$ARES_CONFIG``, else none."""
    if explicit is not None:
        return explicit
    if not _config_env.get():
        return None
    named = os.environ.get(CONFIG_ENV, "").strip()
    return Path(named) if named else None


def file_source(settings_cls: type[BaseSettings]) -> PydanticBaseSettingsSource | None:
    """The settings source for the config file in effect, or None without one."""
    path = config_file_path(_config_file.get())
    if path is None:
        return None
    if not path.is_file():
        raise ConfigFileError(
            f"config file {path} does not exist (named by --config or {CONFIG_ENV})"
        )
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            return TomlConfigSettingsSource(settings_cls, toml_file=path)
        if suffix in (".yaml", ".yml"):
            return YamlConfigSettingsSource(settings_cls, yaml_file=path)
        if suffix == ".json":
            return JsonConfigSettingsSource(settings_cls, json_file=path)
    except (OSError, ValueError) as exc:  # tomllib, yaml and json errors are ValueErrors
        raise ConfigFileError(f"config file {path}: {exc}") from exc
    raise ConfigFileError(f"config file {path}: use .toml, .yaml, .yml or .json")


def ordered_sources(
    settings_cls: type[BaseSettings],
    init_settings: PydanticBaseSettingsSource,
    env_settings: PydanticBaseSettingsSource,
) -> tuple[PydanticBaseSettingsSource, ...]:
    """For ``settings_customise_sources``: flags, then environment, then the config file."""
    from_file = file_source(settings_cls)
    return (
        (init_settings, env_settings)
        if from_file is None
        else (
            init_settings,
            env_settings,
            from_file,
        )
    )


class ServiceSettings(BaseSettings):
    """Base of each service's settings: ARES_* variables (nested with ``__``) and the file."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return ordered_sources(settings_cls, init_settings, env_settings)


@contextlib.contextmanager
def _using(config_file: Path | None) -> Iterator[None]:
    token = _config_file.set(config_file)
    try:
        yield
    finally:
        _config_file.reset(token)


@contextlib.contextmanager
def ignoring_config_env() -> Iterator[None]:
    """Settings built meanwhile read no file unless one is named explicitly: as a process will
    that is started without ``ARES_CONFIG`` (the demo's devices, whose file it is not)."""
    token = _config_env.set(False)
    try:
        yield
    finally:
        _config_env.reset(token)


def load_settings(cls: type[S], config_file: Path | None = None, **flags: Any) -> S:
    """Build ``cls`` from defaults, the config file, the environment and ``flags``."""
    with _using(config_file):
        return cls(**flags)


# --- showing settings back ------------------------------------------------------------------------


class SettingsError(AresError, ValueError):
    """Invalid settings, each named with where its value came from (one line)."""


def describe_error(exc: ValidationError, sources: Mapping[str, str] | None = None) -> str:
    """One line per invalid setting, with where its value came from.

    ``sources`` (from :func:`setting_sources`) names the flag, variable or file that gave each
    value; a setting it does not cover is named as in the config file and the environment.
    """
    lines = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        source = _source_of(loc, sources or {})
        name, env = ".".join(loc), ENV_PREFIX + "__".join(loc).upper()
        where = f"from {source}" if source else f"file key {name!r}, env {env}"
        # An error of the settings as a whole (a validator of several) has no one source.
        lines.append(f"  {error_text(error, '(settings)')}" + (f"  [{where}]" if loc else ""))
    return "\n".join(lines)


def _source_of(loc: list[str], sources: Mapping[str, str]) -> str | None:
    """The source of the setting at ``loc`` or of the table or mapping that holds it."""
    for end in range(len(loc), 0, -1):
        if (source := sources.get(".".join(loc[:end]))) is not None:
            return source
    return None


def setting_sources(
    settings_cls: type[BaseSettings],
    config_file: Path | None,
    flags: Mapping[str, Any],
    flag_names: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Where each given setting came from (dotted names): 'flag --x', 'env ARES_X' or 'file F'.

    Later sources override earlier ones, as in the settings' precedence. ``flag_names`` maps a
    setting to the flag that sets it where that is not ``--`` and its name with dashes.
    """
    sources: dict[str, str] = {}
    path = config_file_path(config_file)
    if path is not None:
        with _using(config_file):
            source = file_source(settings_cls)
        if source is not None:
            for name in _leaves(source()):
                sources[name] = f"file {path}"
    for variable in os.environ:
        setting = env_setting(variable)
        if setting is not None and setting.split(".")[0] in settings_cls.model_fields:
            sources[setting] = f"env {variable}"
    for name in _leaves(dict(flags)):
        flag = (flag_names or {}).get(name) or "--" + name.rsplit(".", 1)[-1].replace("_", "-")
        sources[name] = f"flag {flag}"
    return sources


def env_setting(variable: str) -> str | None:
    """The dotted setting an ``ARES_*`` variable names (``ARES_MQTT__URL``: mqtt.url), or None."""
    if not variable.upper().startswith(ENV_PREFIX):
        return None
    return variable[len(ENV_PREFIX) :].lower().replace("__", ".") or None


def env_names(settings_cls: type[BaseSettings]) -> set[str]:
    """Every ``ARES_*`` variable the settings read (a table's keys, and the table as JSON)."""
    names = set()
    for name, field in settings_cls.model_fields.items():
        names.add(ENV_PREFIX + name.upper())
        table = field.annotation
        if name in NESTED and isinstance(table, type) and issubclass(table, BaseModel):
            names.update(f"{ENV_PREFIX}{name.upper()}__{key.upper()}" for key in table.model_fields)
    return names


def _leaves(values: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and key in NESTED:
            yield from _leaves(value, name + ".")
        else:
            yield name


def show_settings(
    settings: BaseSettings,
    config_file: Path | None = None,
    flags: Mapping[str, Any] | None = None,
    flag_names: Mapping[str, str] | None = None,
) -> str:
    """The effective settings as TOML a user can paste into a config file.

    Secrets are masked, unset values commented out, and each value not at its default says
    where it came from.
    """
    sources = setting_sources(type(settings), config_file, flags or {}, flag_names)
    scalars: list[tuple[str, Any]] = []
    tables: list[tuple[str, Any]] = []
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        (tables if isinstance(value, BaseModel) else scalars).append((name, value))
    lines = [_toml_line(name, value, sources.get(name)) for name, value in scalars]
    for table, model in tables:
        lines += ["", f"[{table}]"]
        lines += [
            _toml_line(name, getattr(model, name), sources.get(f"{table}.{name}"))
            for name in type(model).model_fields
        ]
    return "\n".join(lines) + "\n"


def _toml_line(key: str, value: Any, source: str | None) -> str:
    note = f"  # from {source}" if source else ""
    if value is None:
        return f"# {key} = (unset){note}"
    shown = toml_value(MASK) if isinstance(value, SecretStr) else toml_value(value)
    return f"{key} = {shown}{note}"


def toml_value(value: object) -> str:
    """A TOML literal for a bool, number, string, path, list or tuple, or a mapping of them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | PurePath):
        return _toml_string(str(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        inner = ", ".join(f"{_toml_string(str(k))} = {toml_value(v)}" for k, v in value.items())
        return "{" + (f" {inner} " if inner else "") + "}"
    raise TypeError(f"no TOML rendering for {type(value).__name__}")


def _toml_string(text: str) -> str:
    """A TOML basic string: quote, backslash and control characters escaped (DEL included)."""
    out = ['"']
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04X}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)
