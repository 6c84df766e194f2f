"""One way to read and write the method's configs: :class:`ConfigBase`, for frozen dataclasses.

Every config (model, supernet training, retraining, search, evaluator, verification) is a
frozen dataclass stored as JSON in checkpoints and in the database, and read back from YAML or
from REST bodies. :meth:`ConfigBase.from_mapping` does that in one place: unknown keys are an
error naming them and the known ones, nested configs are read recursively, lists become tuples
where the field is a tuple, and a wrong type becomes a :class:`ValueError` with one line.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

__all__ = ["ConfigBase", "read_yaml_mapping"]


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """The mapping a YAML config file holds (an empty file: ``{}``).

    Raises:
        ValueError: not valid YAML, or not a mapping.
    """
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the config must be a mapping")
    return data


def _unwrap_optional(hint: Any) -> Any:
    """``X | None`` -> ``X``; anything else unchanged."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


class ConfigBase:
    """Mixin for frozen dataclass configs: ``to_dict``, ``from_mapping``, ``from_yaml``.

    Subclasses set ``config_name`` (used in messages, e.g. "retraining config").
    """

    config_name: ClassVar[str] = "config"

    @classmethod
    @functools.cache
    def _field_kinds(cls) -> dict[str, tuple[str, Any]]:
        """Field name -> ("config", class) for a nested config, ("tuple", None), or ("plain", None)."""
        hints = typing.get_type_hints(cls)
        kinds: dict[str, tuple[str, Any]] = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            hint = _unwrap_optional(hints[f.name])
            if isinstance(hint, type) and issubclass(hint, ConfigBase):
                kinds[f.name] = ("config", hint)
            elif hint is tuple or typing.get_origin(hint) is tuple:
                kinds[f.name] = ("tuple", None)
            else:
                kinds[f.name] = ("plain", None)
        return kinds

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (tuples as lists, nested configs as mappings)."""
        out: dict[str, Any] = {}
        for name, (kind, _) in self._field_kinds().items():
            value = getattr(self, name)
            if kind == "config" and value is not None:
                value = value.to_dict()
            elif kind == "tuple" and value is not None:
                value = list(value)
            out[name] = value
        return out

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Self:
        """Build from plain data (YAML, JSON, a request body).

        Raises:
            ValueError: ``data`` is not a mapping, has an unknown key, a nested config or a tuple
                field of the wrong kind, or a value the config's own checks refuse.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"the {cls.config_name} must be a mapping, got {type(data).__name__}")
        kinds = cls._field_kinds()
        unknown = sorted(set(data) - set(kinds))
        if unknown:
            raise ValueError(f"unknown {cls.config_name} key(s) {unknown}; known: {sorted(kinds)}")
        kwargs = dict(data)
        for name, value in data.items():
            kind, sub = kinds[name]
            if value is None:
                continue
            if kind == "config":
                if isinstance(value, sub):
                    continue
                if not isinstance(value, Mapping):
                    raise ValueError(f"{cls.config_name}: {name!r} must be a mapping of {sub.__name__} fields")
                kwargs[name] = sub.from_mapping(value)
            elif kind == "tuple":
                if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
                    raise ValueError(f"{cls.config_name}: {name!r} must be a list, got {value!r}")
                kwargs[name] = tuple(value)
        try:
            return cls(**kwargs)
        except TypeError as exc:  # e.g. a required key missing
            raise ValueError(f"bad {cls.config_name}: {exc}") from None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """The same as :meth:`from_mapping` (the name older callers use)."""
        return cls.from_mapping(data)

    @classmethod
    def from_yaml(cls, path: Path) -> Self:
        """Read a YAML file holding one mapping of this config's fields.

        Raises:
            ValueError: not valid YAML, not a mapping, or a bad config (see :meth:`from_mapping`).
        """
        return cls.from_mapping(read_yaml_mapping(path))
