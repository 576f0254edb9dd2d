"""What every command shares: absl flags, one `--help`, one error convention, `--verbose`.

A command module defines its flags in a `define_flags()` (called when the command runs, not at
import: several commands define flags with the same names) and a `main(argv) -> exit code | None`
that parses nothing itself and raises on failure. `run(...)` wraps it:

  --help / -h      the command's description, an example, and its flags; exit 0
  usage errors     bad or missing flags, unknown config fields, config files that do not load,
                   errors.ConfigError                  -> one line `<command>: error: ...`, exit 2
  runtime errors   anything else                       -> one line `<command>: error: ...`, exit 1
  SIGTERM          train's Preempted (checkpoint saved) -> its message, exit 143
  --verbose        the full traceback before that line
Library imports happen inside `main` so that `--help` and usage errors answer before jax loads.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Callable

from absl import app, flags

from dsvl_jax.errors import ConfigError, Error, Preempted

FLAGS = flags.FLAGS
USAGE_EXIT, FAILURE_EXIT, PREEMPTED_EXIT = 2, 1, 143
HELP_ARGS = ("-h", "--help", "-help", "--helpshort")


def setup_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("DSVL_LOG", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("absl", "jax._src", "orbax"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def setup_device_process() -> None:
    """Logging, plus the host-allocator setting for commands that run XLA computations
    (parallel/host_memory.py: no per-step page faults on CPU)."""
    from dsvl_jax.parallel.host_memory import retain_freed_memory

    setup_logging()
    retain_freed_memory()


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def _fail(name: str, exc: BaseException | str, code: int) -> None:
    if isinstance(exc, BaseException) and _verbose():
        traceback.print_exception(exc, file=sys.stderr)
    msg = exc if isinstance(exc, str) else _describe(exc)
    hint = ""
    if isinstance(exc, BaseException) and not isinstance(
        exc, (Error, app.UsageError, flags.Error, OSError)
    ):
        hint = " (--verbose shows the traceback)"
    print(f"{name}: error: {one_line(msg)}{hint}", file=sys.stderr, flush=True)
    sys.exit(code)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, (Error, app.UsageError, flags.Error)):
        return str(exc)
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    return f"{type(exc).__name__}: {exc}"


def _verbose() -> bool:
    try:
        return bool(FLAGS.verbose)
    except (AttributeError, flags.UnparsedFlagAccessError):
        return "--verbose" in sys.argv


def _flag_args(argv: list[str]) -> list[str]:
    """argv up to a bare `--` (what absl parses as flags)."""
    return argv[: argv.index("--")] if "--" in argv else argv


def _parse_error(argv: list[str], exc: Exception) -> str:
    """A flag-parsing failure, with the flag at fault named where absl or ml_collections do not."""
    if isinstance(exc, flags.Error):
        return str(exc)
    config = next((a for a in _flag_args(argv) if a.startswith("--config=")), "")
    # ml_collections raises AttributeError('field') for an override of a field the config lacks
    if isinstance(exc, AttributeError) and exc.args:
        field = str(exc.args[0]).strip("'\"")
        hits = [
            a
            for a in _flag_args(argv)
            if a.startswith("--config.") and a.split("=", 1)[0].split(".")[-1] == field
        ]
        if hits:
            return f"{hits[0]}: the config has no field {field!r}"
    where = f"{config}: " if config else ""
    return where + _describe(exc)


def _check_configs(names: list[str], argv: list[str]) -> None:
    """ml_collections defers a config file's load error until first access: surface it now."""
    for name in names:
        value = FLAGS[name].value
        try:
            value.keys  # noqa: B018 - an _ErrorConfig raises its load error on any attribute access
        except AttributeError:
            pass
        except Exception as e:
            given = next(
                (a.split("=", 1)[1] for a in _flag_args(argv) if a.startswith(f"--{name}=")), ""
            )
            path = given.split(":", 1)[0] or FLAGS[name].default_as_str or ""
            if path and not os.path.exists(path.strip("'\"")):
                raise ConfigError(f"--{name}={given}: config file {path} not found") from e
            raise ConfigError(f"--{name}={given}: {e.__cause__ or e}") from e


def check_usage(
    argv: list[str] = (), *, required: tuple[str, ...] = (), paths: tuple[str, ...] = ()
) -> None:
    """UsageError for positional arguments, unset `required` flags, or `paths` flags naming nothing."""
    if argv:
        raise app.UsageError(f"unexpected arguments {list(argv)}")
    missing = [f"--{n}" for n in required if FLAGS[n].value in (None, "")]
    if missing:
        raise app.UsageError(
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required"
        )
    for n in paths:
        if FLAGS[n].value and not os.path.exists(FLAGS[n].value):
            raise app.UsageError(f"--{n} {FLAGS[n].value} not found")


def help_text(name: str, doc: str, example: str, modules: list[str]) -> str:
    flag_help = "\n".join(h for h in (FLAGS.module_help(m) for m in modules) if h.strip())
    return (
        f"python -m dsvl_jax.{name}: {doc.strip()}\n\nExample:\n  {example}\n\n"
        f"Flags:\n{flag_help}\n\n(--helpfull lists every flag, including absl's own)"
    )


def run(
    name: str,
    main: Callable[[list[str]], int | None],
    *,
    doc: str,
    example: str,
    define_flags: Callable[[], None] | None = None,
    config_flags: tuple[str, ...] = (),
    argv: list[str] | None = None,
) -> None:
    """Define the flags, answer --help, parse, run `main(positional args)`; exit by the convention."""
    argv = list(sys.argv if argv is None else argv)
    module = getattr(main, "__module__", "__main__")
    if define_flags is not None:
        try:
            define_flags()
        except Exception as e:  # noqa: BLE001 - a default config that does not load, or a bad override of it
            _fail(name, e if isinstance(e, ConfigError) else _parse_error(argv, e), USAGE_EXIT)
    if "verbose" not in FLAGS:
        flags.DEFINE_bool("verbose", False, "On an error, also print the full traceback.")
    if any(a in HELP_ARGS for a in _flag_args(argv)[1:]):
        try:
            print(help_text(name, doc, example, [module, __name__]), flush=True)
        except BrokenPipeError:  # `--help | head`
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - nothing more is written
        sys.exit(0)

    def parse(args: list[str]) -> list[str]:
        try:
            rest = FLAGS(args)
            _check_configs(list(config_flags), args)
            return rest
        except Exception as e:  # noqa: BLE001 - every parse failure is a usage error
            _fail(name, e if isinstance(e, ConfigError) else _parse_error(args, e), USAGE_EXIT)

    def wrapped(args: list[str]) -> None:
        try:
            code = main(args[1:])
        except SystemExit:
            raise
        except (app.UsageError, ConfigError, flags.Error) as e:
            _fail(name, e, USAGE_EXIT)
        except Preempted as e:
            print(f"{name}: {one_line(str(e))}", file=sys.stderr, flush=True)
            sys.exit(PREEMPTED_EXIT)
        except KeyboardInterrupt:
            _fail(name, "interrupted", 130)
        except BaseException as e:  # noqa: BLE001 - the one place a failure becomes an exit code
            _fail(name, e, FAILURE_EXIT)
        sys.exit(code or 0)

    app.run(wrapped, argv=argv, flags_parser=parse)
