"""Prepared datasets on disk -> random-access sources of `records.Example` for grain.

A prepared dataset is a tfds dataset directory (dataset_info.json + ArrayRecord shards), written by
`builders.py`; `--out DIR` of `python -m dsvl_jax.data prepare|generate` is its tfds data_dir:

  DIR/dsvl_imported/1.0.0/dsvl_imported-train.array_record-00000-of-00001   (prepare)
  DIR/dsvl_chart/n1000_seed0_px256/1.0.0/dsvl_chart-train.array_record-...  (generate, one per kind)

`open_source(path)` accepts the version dir itself or any folder above it holding exactly one
dataset; `open_sources(path)` returns all of them. Reading needs no TensorFlow and no builder class.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence

from dsvl_jax.data import records
from dsvl_jax.errors import ConfigError

INFO_FILE = "dataset_info.json"


class DataNotFound(FileNotFoundError, ConfigError):
    """A configured data folder that does not exist or holds no prepared dataset."""


HINT = (
    "write it with `python -m dsvl_jax.data generate --out DIR` (the embedded corpus) or "
    "`python -m dsvl_jax.data prepare ... --out DIR` (your data), or point data_root / "
    "data.sources.<name>.path at it"
)


HELDOUT = "heldout"  # <source>/heldout holds a source's held-out split: not part of the source


def find_datasets(path: str, max_depth: int = 4) -> list[str]:
    """Dataset (version) directories at or below `path`, sorted; a `heldout` folder below `path` is the
    held-out split of what is above it and is not searched (open `path/heldout` to read it)."""
    if not os.path.isdir(path):
        raise DataNotFound(f"prepared data dir {path} does not exist; {HINT}")
    found, base = [], path.rstrip(os.sep).count(os.sep)
    for root, dirs, files in os.walk(path):
        if INFO_FILE in files:
            found.append(root)
            dirs[:] = []
        elif root.count(os.sep) - base >= max_depth:
            dirs[:] = []
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("downloads", HELDOUT)]
    return sorted(found)


class ShardSource:
    """`len()` and `[i] -> Example` over one split of a prepared dataset; pickles as its path.

    The tfds reader is opened lazily, so a copy sent to a grain worker process opens its own files.
    """

    def __init__(self, dataset_dir: str, split: str = "train"):
        if not os.path.isfile(os.path.join(dataset_dir, INFO_FILE)):
            raise DataNotFound(f"{dataset_dir} has no {INFO_FILE}: not a prepared dataset dir")
        self.dataset_dir, self.split = os.path.abspath(dataset_dir), split
        self._src = None

    def _source(self):
        if self._src is None:
            import tensorflow_datasets as tfds

            builder = tfds.builder_from_directory(self.dataset_dir)
            if self.split not in builder.info.splits:
                raise KeyError(
                    f"{self.dataset_dir}: no split {self.split!r}; has {list(builder.info.splits)}"
                )
            self._src = builder.as_data_source(self.split)
        return self._src

    def __len__(self) -> int:
        return len(self._source())

    def __getitem__(self, index: int) -> records.Example:
        n = len(self)
        i = index + n if index < 0 else index
        if not 0 <= i < n:
            raise IndexError(f"index {index} out of range for {self.dataset_dir} ({n} records)")
        return records.from_features(self._source()[i])

    def __getitems__(self, indices: Sequence[int]) -> list[records.Example]:
        return [records.from_features(d) for d in self._source().__getitems__(list(indices))]

    def __getstate__(self) -> dict:
        return {"dataset_dir": self.dataset_dir, "split": self.split}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["dataset_dir"], state["split"])

    def __repr__(self) -> str:
        return f"ShardSource({self.dataset_dir!r}, split={self.split!r})"


def open_source(path: str, split: str = "train") -> ShardSource:
    """The one prepared dataset at or below `path` as a random-access source of Examples."""
    found = find_datasets(path)
    if len(found) != 1:
        what = (
            "no prepared dataset"
            if not found
            else f"{len(found)} datasets ({', '.join(found)}); pick one"
        )
        raise (ConfigError if found else DataNotFound)(
            f"{path}: {what} (a dataset dir holds {INFO_FILE}); {HINT}"
        )
    return ShardSource(found[0], split)


def open_sources(path: str, split: str = "train") -> dict[str, ShardSource]:
    """Every prepared dataset at or below `path`, keyed by its path relative to `path`."""
    found = find_datasets(path)
    if not found:
        raise DataNotFound(f"{path}: no prepared dataset (a dataset dir holds {INFO_FILE}); {HINT}")
    return {os.path.relpath(d, path): ShardSource(d, split) for d in found}


def check_sources(sources: Mapping[str, Mapping], *, holdout: bool = False) -> None:
    """DataNotFound naming every configured source (`data.sources` / `eval.sources`: name ->
    {path, kind, ...}) whose path holds no prepared dataset, with the commands that write it.
    `holdout`: the run also evaluates on <path>/heldout, so the commands write that split too."""
    missing = [
        (n, s["path"], s.get("kind", "") or n) for n, s in sources.items() if not _found(s["path"])
    ]
    if missing:
        raise DataNotFound(_missing_message(missing, holdout))


def _found(path: str) -> bool:
    try:
        return bool(find_datasets(path))
    except DataNotFound:
        return False


def _missing_message(missing: list[tuple[str, str, str]], holdout: bool) -> str:
    def where(path: str) -> str:
        return f"{path}, no prepared dataset in it" if os.path.isdir(path) else path

    missing = [(n, p.rstrip(os.sep), k) for n, p, k in missing]
    split = [m for m in missing if os.path.basename(m[1]) == HELDOUT]
    if split:  # the data is there, its held-out split is not
        names = ", ".join(f"{n!r} ({where(p)})" for n, p, _ in split)
        return (
            f"no held-out split for source {names}: the run evaluates on it; write the data again with a "
            "held-out share (`python -m dsvl_jax.data generate|prepare ... --holdout 0.01 --overwrite`), "
            "or evaluate nothing: --config.eval.every_steps=0"
        )
    names = ", ".join(f"{n!r} ({where(p)})" for n, p, _ in missing)
    # sources in the data_root layout (set_sources: <root>/dsvl_<kind>) are what `generate` writes
    layout = [(os.path.dirname(p), k) for _, p, k in missing if os.path.basename(p) == f"dsvl_{k}"]
    fixes = []
    if layout:
        roots = sorted({r for r, _ in layout})
        kinds = ",".join(dict.fromkeys(k for _, k in layout))
        fixes.append(
            f"`python -m dsvl_jax.data generate --out {roots[0] if len(roots) == 1 else 'DATA_ROOT'}"
            f" --kinds {kinds}{' --holdout 0.01' if holdout else ''}` (the embedded stand-in corpora)"
        )
    custom = [(n, p) for n, p, k in missing if os.path.basename(p) != f"dsvl_{k}"]
    name, out = custom[0] if custom else (missing[0][0], "DIR")
    fixes.append(
        f"`python -m dsvl_jax.data prepare --format F --input PATH --out {out}"
        f"{' --holdout 0.01' if holdout else ''}` (your own data)"
        + ("" if custom else f" with --config.data.sources.{name}.path=DIR")
    )
    if layout:
        fixes.append("--config.data_root=DIR where the corpora already are")
    return f"no prepared data for source {names}; write {'them' if len(missing) > 1 else 'it'}: {'; or '.join(fixes)}"


def iter_examples(paths: Iterable[str]) -> Iterator[records.Example]:
    """Every Example of the prepared datasets at `paths`, in order (e.g. to train a tokenizer on)."""
    for p in paths:
        src = open_source(p)
        for i in range(len(src)):
            yield src[i]
