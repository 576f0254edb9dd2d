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


def _parse_error(argv: list[str], exc: Exception, config_names: tuple[str, ...] = ()) -> str:
    """A flag-parsing failure, with the flag at fault named where absl or ml_collections do not:
    an override of a field the config lacks (with the closest names), a config file that raised."""
    if why := _override_error(argv, config_names, exc):
        return why
    if why := _config_file_error(argv, exc, config_names or ("config",)):
        return why
    if isinstance(exc, flags.Error):
        return str(exc)
    config = next((a for a in _flag_args(argv) if a.startswith("--config=")), "")
    where = f"{config}: " if config else ""
    return where + _describe(exc)


def _given(argv: list[str], name: str, exc: BaseException | None = None) -> str:
    """The value of `--name=v` / `--name v` in argv, else the flag's default (as text), else ""."""
    args = _flag_args(argv)
    for i, a in enumerate(args):
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
        if a == f"--{name}" and i + 1 < len(args):
            return args[i + 1]
    if name in FLAGS:
        return (FLAGS[name].default_as_str or "").strip("'\"")
    # a default config that failed while its flag was being defined: the path its parser was given
    tb = exc.__traceback__ if exc is not None else None
    for frame, _ in traceback.walk_tb(tb):
        flag, arg = frame.f_locals.get("self"), frame.f_locals.get("argument")
        if isinstance(flag, flags.Flag) and flag.name == name and isinstance(arg, str):
            return arg
    return ""


def _override_error(argv: list[str], names: tuple[str, ...], exc: BaseException) -> str | None:
    """`--<name>.a.b=v` naming no field of config `name`: which section, the closest names.
    ml_collections applies overrides while it loads the file and keeps nothing when one fails, so the
    file is loaded again here (config.load_experiment) to see its fields."""
    from dsvl_jax.config import field_error, load_experiment

    for name in names:
        overrides = [a for a in _flag_args(argv) if a.startswith(f"--{name}.")]
        given = _given(argv, name, exc)
        if not overrides or not given:
            continue
        path, _, arg = given.partition(":")
        try:
            cfg = load_experiment(path, arg)
        except Exception:  # noqa: BLE001 - a file that does not load is reported as such elsewhere
            continue
        for a in overrides:
            if why := field_error(cfg, a.split("=", 1)[0][len(name) + 3 :]):
                return f"{a}: {why}"
    return None


def _config_file_error(argv: list[str], exc: BaseException, names: tuple[str, ...]) -> str | None:
    """A config file whose get_config raised (ml_collections wraps a ValueError / TypeError in a
    message holding the whole traceback): the original error and the file's line, on one line."""
    chain, e = [], exc
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    marked = [i for i, e in enumerate(chain) if "Error whilst parsing config" in str(e)]
    if not marked:
        return None
    wrapper = marked[-1]
    orig = chain[wrapper + 1] if wrapper + 1 < len(chain) else chain[wrapper]
    if orig is chain[wrapper]:  # no original kept: the traceback's last line names it
        lines = [ln for ln in str(orig).splitlines() if ln.strip()]
        what = lines[-1].strip() if lines else str(orig)
    else:
        what = _describe(orig)
    name = next((n for n in names if _given(argv, n)), names[0])
    given = f"--{name}={_given(argv, name)}"
    path = _given(argv, name).split(":", 1)[0]
    frames = [
        f
        for f in traceback.extract_tb(orig.__traceback__)
        if os.path.abspath(f.filename) == os.path.abspath(path)
    ]
    at = f" ({os.path.basename(path)}, line {frames[-1].lineno})" if frames else ""
    return f"{given}: the config file raised {what}{at}"


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
            why = e if isinstance(e, ConfigError) else _parse_error(argv, e, config_flags)
            _fail(name, why, USAGE_EXIT)
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
            _fail(
                name,
                e if isinstance(e, ConfigError) else _parse_error(args, e, config_flags),
                USAGE_EXIT,
            )

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
