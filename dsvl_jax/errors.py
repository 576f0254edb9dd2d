"""The error types every layer raises, so that each command reports a failure the same way.

A dsvl_jax error carries a message a user can act on (it names the file, record, config field or
tensor, and what was expected). Commands print it as one line, `<command>: error: <message>`, and
exit with the code of its kind:

  ConfigError        a config field, flag or argument is wrong        exit 2 (with usage errors)
  Preempted          SIGTERM: a checkpoint was saved                  exit 143
  Interrupted        SIGTERM / SIGINT (Ctrl-C) at any other moment   exit 143 / 130
  Error (any other)  the run cannot go on: data, checkpoint, input    exit 1

Each package subclasses these for its own cases (`parallel.MeshError` is a ConfigError,
`data.pipeline.DataError` an Error), so callers catch by kind, not by module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

# Shapes are compared as tuples of ints; a mismatch entry names both shapes.
Shapes = Mapping[str, tuple[int, ...]]


class Error(Exception):
    """Base of dsvl_jax's own errors."""


class ConfigError(Error, ValueError):
    """A config field, flag or argument has a value that cannot work; names the field."""


class Interrupted(Error, RuntimeError):
    """The run stopped on a signal: SIGTERM (exit 143) or SIGINT (exit 130); `code` is the exit code.
    The message says what was saved (a step checkpoint, final/, or nothing before the first step)."""

    def __init__(self, message: str, code: int = 143):
        super().__init__(message)
        self.code = code

    @classmethod
    def before_first_step(cls, signame: str) -> Interrupted:
        """A signal during start-up, set-up or the first compile: there is nothing to save yet."""
        return cls(
            f"{signame} during set-up (before the first step): nothing saved; rerunning the command "
            "starts again (from the workdir's latest checkpoint, if any)",
            SIGNAL_EXIT[signame],
        )


SIGNAL_EXIT = {"SIGTERM": 143, "SIGINT": 130}  # 128 + the signal number, as shells report it


class Preempted(Interrupted):
    """The run stopped on SIGTERM after saving a checkpoint; rerunning the command resumes (exit 143)."""

    def __init__(self, message: str):
        super().__init__(message, 143)


class CheckpointError(Error, ValueError):
    """A checkpoint or model folder cannot be read: missing, not a known layout, unreadable."""


class CheckpointMismatch(CheckpointError):
    """Tensors and model config disagree: missing, unexpected or mis-shaped tensors.

    The one report for every source of model state (params checkpoints, run checkpoints, HF folders):
    `missing`, `unexpected` and `shapes` are lists of tensor names (shape entries read
    "name: stored (a, b) vs expected (c, d)").
    """

    def __init__(
        self,
        source: str,
        missing: Iterable[str] = (),
        unexpected: Iterable[str] = (),
        shapes: Iterable[str] = (),
    ):
        self.source = source
        self.missing, self.unexpected, self.shapes = (
            sorted(missing),
            sorted(unexpected),
            sorted(shapes),
        )
        parts = []
        if self.missing:
            parts.append(f"missing {len(self.missing)} tensor(s): {_listing(self.missing)}")
        if self.unexpected:
            parts.append(
                f"unexpected {len(self.unexpected)} tensor(s): {_listing(self.unexpected)}"
            )
        if self.shapes:
            parts.append(f"{len(self.shapes)} shape mismatch(es): {_listing(self.shapes, 6)}")
        super().__init__(f"{source}: tensors do not match the model config: " + "; ".join(parts))

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.shapes)

    @classmethod
    def compare(
        cls,
        source: str,
        want: Shapes,
        got: Shapes,
        *,
        unexpected: Iterable[str] = (),
        name: Callable[[str], str] = str,
    ) -> CheckpointMismatch:
        """The mismatch between the shapes a config wants and those a source holds (falsy when none).

        `name` maps a parameter path to the name the user knows it by (e.g. the HF tensor name);
        `unexpected` adds source tensors that map to no parameter at all.
        """
        return cls(
            source,
            missing=[name(k) for k in want if k not in got],
            unexpected=[*unexpected, *(name(k) for k in got if k not in want)],
            shapes=[
                f"{name(k)}: stored {tuple(got[k])} vs expected {tuple(want[k])}"
                for k in want
                if k in got and tuple(got[k]) != tuple(want[k])
            ],
        )

    def raise_if_any(self) -> None:
        if self:
            raise self


def _listing(names: list[str], n: int = 12) -> str:
    more = f" ... (+{len(names) - n} more)" if len(names) > n else ""
    return ", ".join(names[:n]) + more


__all__ = [
    "CheckpointError",
    "CheckpointMismatch",
    "ConfigError",
    "Error",
    "Interrupted",
    "Preempted",
]
