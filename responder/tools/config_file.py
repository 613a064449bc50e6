"""The YAML files tools read (VIGIL_SIGNALS, VIGIL_TOPOLOGY): loaded into a pydantic model,
any problem one line naming the setting, the file and the key."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class ConfigFileError(ValueError):
    """A tool's file is missing or wrong; the message names the setting, file and key."""


def load_config_file(path: Path, model: type[M], setting: str) -> M:
    """Read and validate the file `setting` names (read at each call: an edit counts at once)."""
    where = f"{setting}={path}"
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigFileError(f"{where}: cannot read it: {exc.strerror or exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        reason = " ".join(str(exc).split())  # one line; the mark says where
        raise ConfigFileError(f"{where}: not valid YAML: {reason}") from None
    try:
        return model.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        raise ConfigFileError(f"{where}: {one_line(exc)}") from None


def one_line(exc: ValidationError, whole: str = "the file") -> str:
    """The first error as `key.path: message` (`whole` when it is about the whole input), and
    how many more there are."""
    first = exc.errors(include_url=False)[0]
    key = ".".join(str(p) for p in first["loc"]) or whole
    message = first["msg"].removeprefix("Value error, ")
    more = exc.error_count() - 1
    return f"{key}: {message}" + (f" (+{more} more)" if more else "")
