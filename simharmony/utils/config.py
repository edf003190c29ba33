"""Dataclass configs that round-trip to YAML (nerfstudio style), with strict checking on load."""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from simharmony.errors import ConfigError
from simharmony.utils.io import PathLike, load_yaml, save_yaml

T = TypeVar("T", bound="Config")


class Config:
    """Mixin for ``@dataclass`` configs: ``to_dict``/``from_dict`` and ``save``/``load`` as YAML.

    Unknown keys and values of the wrong type raise :class:`ConfigError` naming the field.
    """

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _to_plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any] | None) -> T:
        data = {} if data is None else data
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.__name__}: expected a mapping, got {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown keys {unknown}; valid keys are {sorted(names)}")
        kwargs = {k: _from_plain(hints[k], v, f"{cls.__name__}.{k}") for k, v in data.items()}
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as e:
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(f"{cls.__name__}: {e}") from e

    def save(self, path: PathLike) -> None:
        save_yaml(path, self.to_dict())

    @classmethod
    def load(cls: type[T], path: PathLike) -> T:
        """From a YAML file; a top-level ``base: other.yaml`` key (relative to the file) is loaded first and
        the file's keys merged over it, mappings key by key, so a recipe states only what it changes."""
        return cls.from_dict(load_yaml_with_base(Path(path)))


def load_yaml_with_base(path: Path, _seen: tuple[Path, ...] = ()) -> Any:
    """``load_yaml`` resolving a top-level ``base:`` chain (see :meth:`Config.load`); ConfigError on a cycle."""
    data = load_yaml(path)
    if not isinstance(data, dict) or "base" not in data:
        return data
    here = path.resolve()
    base = (path.parent / str(data.pop("base"))).resolve()
    if base in _seen + (here,):
        raise ConfigError(f"{path}: 'base' chain loops back to {base}")
    return _merged(load_yaml_with_base(base, _seen + (here,)), data)


def _merged(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def require(cond: bool, owner: str, msg: str) -> None:
    """Raise ``ConfigError("<owner>: <msg>")`` unless ``cond``: the one check used by configs' ``__post_init__``."""
    if not cond:
        raise ConfigError(f"{owner}: {msg}")


def all_finite(*values: Any) -> bool:
    """True if every value is a real number (not a bool) and finite."""
    return all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in values)


def require_finite_fields(config: Any) -> None:
    """Raise ConfigError naming the first field annotated ``float`` (``float | None``, ``tuple[float, ...]``,
    ``list[float]``) of the dataclass ``config`` that holds NaN, infinity or a non-number: YAML reads ``.nan``
    and ``.inf`` as floats, and a NaN passes every ``<`` / ``>`` range check. Call it first in
    ``__post_init__``; the range checks then only have to be about ranges."""
    owner = type(config).__name__
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        tp = hints.get(f.name)
        value = getattr(config, f.name)
        if _is_float_type(tp):
            require(value is None and _allows_none(tp) or all_finite(value), owner,
                    f"{f.name} must be a finite number, got {value!r}")
        elif _is_float_seq_type(tp) and isinstance(value, (list, tuple)):
            require(all_finite(*value), owner, f"{f.name} must hold finite numbers, got {value!r}")


def _allows_none(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _is_float_type(tp: Any) -> bool:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return bool(args) and all(a in (float, int) for a in args) and float in args
    return tp is float


def _is_float_seq_type(tp: Any) -> bool:
    if typing.get_origin(tp) not in (tuple, list):
        return False
    args = [a for a in typing.get_args(tp) if a is not Ellipsis]
    return bool(args) and all(a is float for a in args)


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def _from_plain(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _from_plain(arg, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: value {value!r} matches none of {args}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if issubclass(tp, Config):
            return tp.from_dict(value)
        raise ConfigError(f"{where}: nested dataclass {tp.__name__} must derive from Config")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_from_plain(a, v, where) for a, v in zip(args, value))
        item = args[0] if args else Any
        out = [_from_plain(item, v, where) for v in value]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{where}: expected a path string, got {value!r}")
        return Path(value)
    return value
