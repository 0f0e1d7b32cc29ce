"""The one way a config dataclass is built: frozen, types and values checked at construction.

Every config class (the training config's sections in personsearch.config, `ReidConfig`,
`DetectorConfig`) is a frozen dataclass deriving from `ConfigBase`:

    @dataclass(frozen=True)
    class HeadConfig(ConfigBase):
        SECTION = "model"            # the key path its errors name
        dim: int = 512
        def check(self) -> None:     # value checks; types are checked before it runs
            ...

Constructing one checks each field against its annotation (converting the harmless cases: an int
for a float, a list for a tuple) and then runs `check()`. `from_dict` builds one from nested
mappings (YAML) and names an unknown key with its path; `to_dict` is the plain-types inverse.
This module imports no torch, so reading a config stays light.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

from personsearch.errors import ConfigError

T = TypeVar("T", bound="ConfigBase")


class ConfigBase:
    """Base of the config dataclasses (declare them `@dataclass(frozen=True)`)."""

    #: the key path of this config in a training config ("model"); errors are named with it
    SECTION: ClassVar[str] = ""

    def __post_init__(self) -> None:
        prefix = f"{self.SECTION}." if self.SECTION else ""
        for name, annotation in field_types(type(self)).items():
            value = getattr(self, name)
            checked = coerce(value, annotation, prefix + name)
            if checked is not value:
                object.__setattr__(self, name, checked)  # frozen: set once, at construction
        self.check()

    def check(self) -> None:
        """Raise ConfigError naming the first bad value (the types are already checked)."""

    @classmethod
    def from_dict(cls: type[T], values: Mapping[str, Any], prefix: str | None = None) -> T:
        """Build from a mapping (a YAML section); missing keys keep their defaults, unknown
        keys and mistyped values are a ConfigError naming the key with `prefix` (default:
        SECTION + ".")."""
        if prefix is None:
            prefix = f"{cls.SECTION}." if cls.SECTION else ""
        return build(cls, values, prefix)

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (tuples as lists, nested configs as dicts): ready for YAML/JSON."""
        return fields_dict(self)

    def given(self) -> dict[str, Any]:
        """The settings this config was built from: `from_dict`'s mapping as written (so a saved
        config repeats it key for key), or, for one constructed directly, the fields that differ
        from their defaults."""
        written = self.__dict__.get("_given")
        if written is not None:
            return copy.deepcopy(written)
        values = self.to_dict()
        return {
            f.name: values[f.name]
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
            if values[f.name] != plain(_default(f))
        }


def build(cls: type[T], values: Mapping[str, Any], prefix: str = "") -> T:
    """A `cls` from a mapping; the one place unknown keys are found and named."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"config section {prefix.rstrip('.') or '<top>'}: expected a mapping")
    check_keys(cls, values, prefix)
    types_ = field_types(cls)
    kwargs = {name: coerce(value, types_[name], prefix + name) for name, value in values.items()}
    config = cls(**kwargs)
    object.__setattr__(config, "_given", copy.deepcopy(dict(values)))  # for `given()`
    return config


def check_keys(cls: type, values: Mapping[str, Any], prefix: str = "", where: str = "") -> None:
    """ConfigError naming the first key of `values` that is no field of dataclass `cls`, with
    its path (`prefix`) and the valid keys in `where` (default: the path)."""
    names = sorted(f.name for f in dataclasses.fields(cls))
    unknown = sorted(set(values) - set(names))
    if unknown:
        where = where or prefix.rstrip(".") or "the top level"
        raise ConfigError(
            f"unknown config key {prefix}{unknown[0]}; valid keys in {where}: {', '.join(names)}"
        )


def fields_dict(config: Any) -> dict[str, Any]:
    """A config dataclass's fields as plain types (the one `to_dict`)."""
    return {f.name: plain(getattr(config, f.name)) for f in dataclasses.fields(config)}


def plain(value: Any) -> Any:
    """A config value as YAML/JSON types."""
    if isinstance(value, ConfigBase):
        return value.to_dict()
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def _default(field: dataclasses.Field[Any]) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None if field.default is dataclasses.MISSING else field.default


# --------------------------------------------------------------------------------------------
# type checks


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotation of each dataclass field of `cls`."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check `value` against a field annotation; convert the harmless cases (int -> float,
    list -> tuple). ConfigError names `key`."""
    if annotation is Any:
        return value
    if isinstance(annotation, type) and issubclass(annotation, ConfigBase):
        if isinstance(value, annotation):
            return value
        return build(annotation, value or {}, f"{key}.")
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (types.UnionType, typing.Union):
        return _coerce_union(value, annotation, args, key)
    if origin is list:
        return _coerce_list(value, args[0], key)
    if origin is tuple:
        return tuple(_coerce_list(value, args[0], key))  # tuple[X, ...], as the configs use
    if origin is dict:
        return _coerce_dict(value, args[1], key)
    if annotation is type(None):
        if value is None:
            return None
        raise ConfigError(f"config key {key}: expected null, got {value!r}")
    for kind, convert in _SCALARS:
        if annotation is kind:  # identity: bool is a subclass of int, and must not pass as one
            return convert(value, key)
    raise ConfigError(f"config key {key}: unsupported type {annotation}")


def _coerce_union(value: Any, annotation: Any, args: tuple[Any, ...], key: str) -> Any:
    """The member the value already is (an int stays an int in `str | int`), else the first
    member it passes as."""
    for arg in args:
        if isinstance(arg, type) and type(value) is arg:
            return coerce(value, arg, key)
    for arg in args:
        try:
            return coerce(value, arg, key)
        except ConfigError:
            continue
    raise ConfigError(f"config key {key}: {value!r} is not {annotation}")


def _coerce_list(value: Any, item: Any, key: str) -> list[Any]:
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, list):
        raise ConfigError(f"config key {key}: expected a list, got {value!r}")
    return [coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]


def _coerce_dict(value: Any, item: Any, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"config key {key}: expected a mapping, got {value!r}")
    return {str(k): coerce(v, item, f"{key}.{k}") for k, v in value.items()}


def _as_bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    raise ConfigError(f"config key {key}: expected true or false, got {value!r}")


def _as_int(value: Any, key: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ConfigError(f"config key {key}: expected an integer, got {value!r}")


def _as_float(value: Any, key: str) -> float:
    if isinstance(value, str):
        # YAML 1.1 reads "1e-5" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ConfigError(
                f"config key {key}={float(value)!r} is not a finite number (YAML .nan and .inf "
                "are not settings)"
            )
        return float(value)
    raise ConfigError(f"config key {key}: expected a number, got {value!r}")


def _as_str(value: Any, key: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(f"config key {key}: expected a string, got {value!r}")


#: The scalar field types and how a config value becomes one.
_SCALARS: tuple[tuple[type, Callable[[Any, str], Any]], ...] = (
    (bool, _as_bool),
    (int, _as_int),
    (float, _as_float),
    (str, _as_str),
)
