"""Reading a JSON file that may be hostile: invalid, not UTF-8, or nested past Python's recursion limit
(json raises RecursionError on 100k brackets). Each case is one error of the caller's kind naming the
file, never a traceback (config.json of a downloaded model, a run's records, a benchmark file)."""

from __future__ import annotations

import json
import os
from typing import Any

from dsvl_jax.errors import Error

TOO_DEEP = "JSON nested too deeply to parse"


def read(path: str | os.PathLike, error: type[Exception] = Error, kind: type | None = None) -> Any:
    """The parsed file; `error(message)` when it cannot be read or parsed, or (with `kind`) when the
    top level is not of that type (dict for a config)."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise error(f"{path}: {TOO_DEEP}") from None
    except OSError as e:
        raise error(f"{path}: cannot be read ({e.strerror or e})") from None
    if kind is not None and not isinstance(value, kind):
        raise error(f"{path}: expected a JSON {_name(kind)}, found a {type(value).__name__}")
    return value


def _name(kind: type) -> str:
    return {dict: "object", list: "array"}.get(kind, kind.__name__)
