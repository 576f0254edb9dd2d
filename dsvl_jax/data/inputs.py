"""What `data prepare --input` names: a file, a folder (searched recursively) or a glob -> the input
files, in a stable order, each with the name record ids use; compressed files opened transparently.

Real corpora ship as many shards (`part-00017.jsonl.zst`, `00042.tar`, `train-0003-of-0128.parquet`):
one input file is one unit of work for `--workers` and the Beam runner (data/prepare_parallel.py).
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import io
import os
from pathlib import Path
from typing import BinaryIO

from dsvl_jax.errors import ConfigError

COMPRESSED = (".gz", ".zst")


class InputNotFound(FileNotFoundError, ConfigError):
    """The input path given to `prepare` names no file."""


@dataclasses.dataclass(frozen=True)
class Inputs:
    """The files of one --input: `root` is what names are relative to (and the default image root)."""

    spec: str
    root: str
    files: tuple[str, ...]

    def name(self, file: str) -> str:
        """The file's name in record ids: its path relative to `root`, POSIX separators."""
        return Path(os.path.relpath(file, self.root)).as_posix()


def base_suffix(path: str) -> str:
    """`a/b.jsonl.zst` -> `.jsonl` (the format's own suffix, compression removed), lower case."""
    p = path.lower()
    for c in COMPRESSED:
        if p.endswith(c):
            p = p[: -len(c)]
    return os.path.splitext(p)[1]


def expand(spec: str, suffixes: tuple[str, ...]) -> Inputs:
    """The input files of `spec` with one of `suffixes` (after compression suffixes are stripped).

    A file is taken as is (whatever its suffix); a folder contributes its matching files at any
    depth; anything with `*`, `?` or `[` is a glob (`**` recursive). Sorted, so every runner and
    rerun sees the same order.
    """
    if any(ch in spec for ch in "*?["):
        files = sorted(
            f for f in glob.glob(spec, recursive=True) if os.path.isfile(f) and _wanted(f, suffixes)
        )
        if not files:
            raise InputNotFound(f"--input {spec}: the glob matches no {'/'.join(suffixes)} file")
        static = spec[: min(spec.find(c) for c in "*?[" if c in spec)]
        root = static if static.endswith(os.sep) else os.path.dirname(static)
        return Inputs(spec, os.path.abspath(root or "."), tuple(os.path.abspath(f) for f in files))
    if os.path.isfile(spec):
        return Inputs(spec, os.path.dirname(os.path.abspath(spec)), (os.path.abspath(spec),))
    if os.path.isdir(spec):
        files = sorted(
            str(p) for p in Path(spec).rglob("*") if p.is_file() and _wanted(str(p), suffixes)
        )
        if not files:
            raise InputNotFound(f"--input {spec}: a folder with no {'/'.join(suffixes)} file")
        return Inputs(spec, os.path.abspath(spec), tuple(os.path.abspath(f) for f in files))
    raise InputNotFound(f"import input {spec} does not exist")


def _wanted(path: str, suffixes: tuple[str, ...]) -> bool:
    return base_suffix(path) in suffixes


def open_binary(path: str) -> BinaryIO:
    """A file opened for reading bytes; `.gz` and `.zst` are decompressed as they stream."""
    p = path.lower()
    if p.endswith(".gz"):
        return gzip.open(path, "rb")
    if p.endswith(".zst"):
        import zstandard

        raw = open(path, "rb")  # noqa: SIM115 - closed with the reader
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True))
    return open(path, "rb")
