"""Every command fails the same way: usage and config errors exit 2, runtime failures exit 1, each as
one stderr line `<command>: error: ...` (the last one; no traceback unless --verbose); --help exits 0
with the command's flags and an example. Usage errors answer before jax is imported (fast)."""

import json

import pytest

import commands

COMMANDS = (
    "train",
    "convert",
    "data",
    "chat",
    "evaluate",
    "plot",
    "aot",
    "sweep",
    "demo",
    "launch_local",
    "rehearse",
)
STAGE1 = "--config=experiments/stage1_aligner.py:tiny"


def _run(command, *args):
    return commands.run(command, *args, devices=1, timeout=300)


def _one_error_line(p, command, code, *fragments):
    """The error is the last stderr line and the only one of its kind (log lines may come before it)."""
    lines = p.stderr.strip().splitlines()
    assert p.returncode == code, (p.returncode, p.stderr[-3000:])
    assert lines and lines[-1].startswith(f"{command}: error: "), p.stderr[-3000:]
    assert sum(line.startswith(f"{command}: error: ") for line in lines) == 1, p.stderr[-3000:]
    assert "Traceback" not in p.stderr
    for f in fragments:
        assert f in lines[-1], (f, lines[-1])
    return lines[-1]


USAGE = {  # command -> (args, fragments the one line must hold)
    "train": (
        (STAGE1, "--config.train.bogus=1", "--workdir=x"),
        ("--config.train.bogus=1", "no field 'bogus'"),
    ),
    "convert": (("sideways", "--out=x"), ("from-hf", "to-hf", "from-parts")),
    "data": (("shuffle",), ("prepare", "generate", "inspect")),
    "chat": (("--checkpoint=does/not/exist", "hello"), ("--checkpoint does/not/exist not found",)),
    "evaluate": (("--checkpoint=.",), ("--data is required",)),
    "plot": (("does/not/exist",), ("does/not/exist", "metrics.jsonl")),
    "aot": ((STAGE1, "--topology=v9z-3"), ("v9z-3",)),
    "sweep": ((STAGE1, "--grid=train.lrr=1,2", "--workdir=x"), ("train has no field 'lrr'",)),
    "demo": (("--config=experiments/demo.py:13b",), ("13b",)),
    "launch_local": (("--procs=0", "--", "train"), ("--procs",)),
    "rehearse": ((STAGE1, "--workdir=x", "--steps=0"), ("--steps=0",)),
}


@pytest.mark.parametrize("command", COMMANDS)
def test_usage_error_exits_2_with_one_line(command, tmp_path):
    args, fragments = USAGE[command]
    _one_error_line(_run(command, *args), command, 2, *fragments)


def test_config_errors_are_usage_errors():
    """A config file that does not exist, a size it does not know, a missing --config: one line, exit 2."""
    _one_error_line(
        _run("train", "--config=nope.py", "--workdir=x"),
        "train",
        2,
        "config file nope.py not found",
    )
    _one_error_line(
        _run("train", "--config=experiments/stage1_aligner.py:13b", "--workdir=x"),
        "train",
        2,
        "unknown model size '13b'",
    )
    _one_error_line(_run("train", "--workdir=x"), "train", 2, "--config is required")
    _one_error_line(
        _run("aot", "--config=experiments/stage1_aligner.py:tiny"),
        "aot",
        2,
        "--topology is required",
    )


BROKEN_CONFIGS = {  # a config file that does not load: its name -> its text
    "syntax.py": "def get_config(arg=None):\n    return (\n",
    "raises.py": "def get_config(arg=None):\n    raise ValueError('no such recipe')\n",
}
# a newcomer's mistakes: (command, args, fragments of the one line); {tmp} is the test's tmp_path
MISTAKES = {
    "misspelt key": (
        "train",
        (STAGE1, "--workdir=x", "--config.train.lrr=1"),
        ("--config.train.lrr=1", "train has no field 'lrr'", "closest: lr"),
    ),
    "misspelt nested key": (
        "train",
        (STAGE1, "--workdir=x", "--config.model.llm.nheads=2"),
        ("model.llm has no field 'nheads'", "closest: heads"),
    ),
    "unknown source": (
        "train",
        (STAGE1, "--workdir=x", "--config.data.sources.mine.path=d"),
        ("data.sources has no source 'mine'", "caption, ocr", "MIX"),
    ),
    "missing config file": (
        "train",
        ("--config=nope.py", "--workdir=x"),
        ("config file nope.py not found",),
    ),
    "syntax error": (
        "train",
        ("--config={tmp}/syntax.py", "--workdir=x"),
        ("--config={tmp}/syntax.py", "SyntaxError", "line 2"),
    ),
    "get_config raises": (
        "train",
        ("--config={tmp}/raises.py", "--workdir=x"),
        ("--config={tmp}/raises.py", "ValueError: no such recipe", "raises.py, line 2"),
    ),
    "unknown size": (
        "train",
        ("--config=experiments/stage1_aligner.py:13b", "--workdir=x"),
        ("unknown model size '13b'", "'tiny'", "'1.3b'", "'7b'"),
    ),
    "no --config": ("train", ("--workdir=x",), ("--config is required",)),
    "no --workdir": ("train", (STAGE1,), ("--workdir is required",)),
    # the README's real-size line with no data prepared: named before jax loads
    "no data": (
        "train",
        (
            "--config=experiments/stage2_pretrain.py:7b",
            "--workdir={tmp}/run",
            "--config.data_root={tmp}/none",
        ),
        (
            "'caption' ({tmp}/none/dsvl_caption)",
            "'web_code' ({tmp}/none/dsvl_screenshot)",
            "python -m dsvl_jax.data generate --out {tmp}/none --kinds ",
            "--holdout 0.01",
            "python -m dsvl_jax.data prepare --format F --input PATH --out DIR",
            "--config.data_root=DIR",
        ),
    ),
    "sweep misspelt key": (
        "sweep",
        (STAGE1, "--config.train.lrr=1", "--grid=train.lr=1,2", "--workdir=x"),
        ("--config.train.lrr=1", "closest: lr"),
    ),
    "aot get_config raises": (
        "aot",
        ("--config={tmp}/raises.py", "--topology=v5p-8"),
        ("ValueError: no such recipe",),
    ),
    "rehearse unknown size": (
        "rehearse",
        ("--config=experiments/stage2_pretrain.py:13b", "--workdir=x"),
        ("unknown model size '13b'", "'7b'"),
    ),
    "demo misspelt key": (
        "demo",
        ("--config.stage3.train.lrr=1",),
        ("stage3.train has no field 'lrr'", "closest: lr"),
    ),
}


@pytest.mark.parametrize("mistake", MISTAKES)
def test_config_mistakes_are_one_line(mistake, tmp_path):
    """Each mistake: exit 2 and exactly one stderr line (nothing logged before it: it answers before
    jax loads) that names the fault and its fix."""
    for name, text in BROKEN_CONFIGS.items():
        (tmp_path / name).write_text(text)
    command, args, fragments = MISTAKES[mistake]
    p = _run(command, *(a.format(tmp=tmp_path) for a in args))
    line = _one_error_line(p, command, 2, *(f.format(tmp=tmp_path) for f in fragments))
    assert p.stderr.strip() == line
    assert not (tmp_path / "run").exists()


def test_runtime_failures_exit_1_with_one_line(tmp_path):
    """Failures found while working: not a model folder (convert, chat, evaluate), a bad input file (data),
    unreadable metrics (plot); the launcher passes its process's code on. train's runtime failures (a
    checkpoint that does not fit the model) are in test_train.py, next to its corpus."""
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_error_line(
        _run("convert", "to-hf", f"--checkpoint={empty}", f"--out={tmp_path / 'hf'}"),
        "convert",
        1,
        "not a model folder",
    )
    _one_error_line(_run("chat", f"--checkpoint={empty}", "hello"), "chat", 1, "not a model folder")
    items = tmp_path / "items.jsonl"
    items.write_text(json.dumps({"id": "a", "question": "2 + 2?", "answer": "4"}) + "\n")
    _one_error_line(
        _run("evaluate", f"--checkpoint={empty}", f"--data={items}"),
        "evaluate",
        1,
        "not a model folder",
    )
    bad = tmp_path / "caps.jsonl"
    bad.write_text("not json\n" * 3)
    _one_error_line(
        _run(
            "data",
            "prepare",
            "--format=captions",
            f"--input={bad}",
            f"--out={tmp_path / 'd'}",
            "--progress=false",
        ),
        "data",
        1,
        str(bad),
    )
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')
    _one_error_line(_run("plot", str(run)), "plot", 1, "JSONDecodeError")
    # train: an init_from that is not a model, data that was never prepared: config errors, before any compile
    # (train checks its data first; marker dataset dirs pass that check and no record is read before
    # init_from fails)
    root = tmp_path / "data"
    for kind in ("caption", "ocr"):
        (root / f"dsvl_{kind}").mkdir(parents=True)
        (root / f"dsvl_{kind}" / "dataset_info.json").write_text("{}")
    data = f"--config.data_root={root}"
    p = _run("train", STAGE1, f"--workdir={tmp_path / 'w'}", data, f"--config.init_from={empty}")
    _one_error_line(p, "train", 2, f"init_from={empty}", "not a model folder")
    (tmp_path / "w" / "checkpoints").mkdir(parents=True)  # a run that died before its first save
    p = _run("train", STAGE1, f"--workdir={tmp_path / 'w'}", data, f"--config.init_from={empty}")
    _one_error_line(p, "train", 2, f"init_from={empty}", "not a model folder")
    p = _run("train", STAGE1, f"--workdir={tmp_path / 'w'}", "--config.data_root=does/not/exist")
    _one_error_line(p, "train", 2, "does/not/exist", "data generate")
    p = _run("launch_local", "--procs=1", "--devices_per_proc=1", "--", "plot", "does/not/exist")
    assert p.returncode == 2 and "[p0] plot: error:" in p.stdout


def test_verbose_adds_the_traceback(tmp_path):
    p = _run(
        "convert", "to-hf", f"--checkpoint={tmp_path}", f"--out={tmp_path / 'hf'}", "--verbose"
    )
    assert p.returncode == 1 and "Traceback" in p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith("convert: error: ")


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_flags_and_an_example(command):
    p = _run(command, "--help")
    assert p.returncode == 0, p.stderr[-2000:]
    assert (
        p.stdout.startswith(f"python -m dsvl_jax.{command}: ")
        and "Example:\n  python -m dsvl_jax." in p.stdout
    )
    assert f"dsvl_jax.cli.{command}:" in p.stdout and "--[no]verbose" in p.stdout
