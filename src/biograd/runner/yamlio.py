"""YAML reading/writing for configs: PyYAML's safe loader, plus floats written without a dot
(``1e-4``), which YAML 1.1 would otherwise read as the string ``"1e-4"``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from biograd.core.errors import ConfigError


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4``, ``2E5``, ``.5e-3`` as floats."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_scalar(text: str) -> Any:
    """A command-line value parsed as a YAML scalar/flow value (``1e-4`` -> 1e-4, ``[1,2]``)."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError:
        return text


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file, bad syntax or a non-mapping is a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {str(path)!r} must hold a mapping of keys to values, "
            f"got {type(data).__name__}"
        )
    return data


def write_yaml(path: str | Path, data: dict[str, Any]) -> None:
    """Write ``data`` as block-style YAML, keys in the given order."""
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))
