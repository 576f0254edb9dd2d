"""`python -m dsvl_jax.aot`: the fit check compiles the real train step for a TPU slice on this CPU host.

The compile tests need libtpu (`pip install -e .[tpu]`; `make test` installs it) and fail with that
instruction without it; the slice table, the search logic and the OOM parsing need no libtpu.
"""

import importlib.util
import json
import os

import pytest

from dsvl_jax.parallel import topologies as T
from dsvl_jax.train import aot_compile as A

import commands

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _aot(*args):
    assert importlib.util.find_spec("libtpu") is not None, (
        "libtpu not installed: pip install -e .[tpu]"
    )
    return commands.run("aot", *args, timeout=900)


def test_tiny_stage1_fits_v5e_2x2():
    p = _aot("--config=experiments/stage1_aligner.py:tiny", "--topology=v5e:2x2", "--attention=xla")
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    print({k: res[k] for k in ("bytes_per_chip", "compile_s", "projected_mfu", "projected_step_s")})
    assert (
        res["topology"] == "v5e:2x2" and res["chips"] == 4 and res["device_kind"] == "TPU v5 lite"
    )
    assert res["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
    assert res["hbm_bytes_per_chip"] == int(15.75 * 2**30)  # what libtpu lets a program use
    assert res["fits"] is True and 0 < res["bytes_per_chip"] < res["hbm_bytes_per_chip"]
    m = res["memory"]
    assert m["total"] == m["argument"] + m["output"] - m["alias"] + m["temp"] + m["generated_code"]
    assert m["alias"] > 0  # the state is donated: outputs reuse its buffers
    # the stage's layout (batch 8, no accumulation) fits at the first try
    assert (res["global_batch"], res["microbatches"], len(res["attempts"])) == (8, 1, 1)
    from dsvl_jax.model.config import model_config_from_dict
    from dsvl_jax.train.metrics import step_flops

    spec = importlib.util.spec_from_file_location(
        "s1", os.path.join(ROOT, "experiments/stage1_aligner.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg = mod.get_config("tiny")
    flops = step_flops(
        model_config_from_dict(cfg.model), tuple(cfg.train.trainable), 8, cfg.train.seq_len, 1
    )
    assert res["flops_per_step"] == pytest.approx(flops)
    assert 0 < res["projected_mfu"] <= 1 and res["projected_step_s"] > 0 and res["compile_s"] > 0


def test_bad_topology_and_indivisible_batch_fail_with_one_line():
    p = _aot("--config=experiments/stage1_aligner.py:tiny", "--topology=v5p-7")
    assert p.returncode == 2 and "v5p-8" in p.stderr and "v5p-256" in p.stderr
    # 4 rows cannot split over 16 chips
    p = _aot(
        "--config=experiments/stage1_aligner.py:tiny",
        "--topology=v5e-16",
        "--attention=xla",
        "--config.train.batch_size=4",
    )
    assert p.returncode == 2 and "batch" in p.stderr.splitlines()[-1], p.stderr[-2000:]


def test_tiny_stage1_compiles_with_splash_on_tpu():
    p = _aot(
        "--config=experiments/stage1_aligner.py:tiny", "--topology=v5e:2x2", "--attention=splash"
    )
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["attention"] == "splash" and res["fits"] is True


# --- without libtpu --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,libtpu,chips,hbm_gib",
    [
        ("v5p-256", "v5:4x4x8", 128, 95.74),
        ("v5p-128", "v5:4x4x4", 64, 95.74),
        ("v5e-256", "v5e:16x16", 256, 15.75),
        ("v4-128", "v4:4x4x4", 64, 30.75),
        ("v6e-256", "v6e:16x16", 256, 31.25),
        ("v5e-4", "v5e:2x2", 4, 15.75),
        ("v5e:2x2", "v5e:2x2", 4, 15.75),
        ("v5p:2x2x1", "v5:2x2x1", 4, 95.74),
        ("v4-8", "v4:2x2x1", 4, 30.75),
    ],
)
def test_topology_table(name, libtpu, chips, hbm_gib):
    t = T.parse(name)
    assert (t.libtpu_name, t.chips, t.gen.hbm_bytes) == (libtpu, chips, int(hbm_gib * 2**30))
    kw = t.desc_kwargs()
    assert kw["topology_name"] == libtpu and kw["platform"] == "tpu"
    assert kw["chip_config_name"] == (
        "megacore" if libtpu[:2] in ("v4", "v5") and libtpu[:3] != "v5e" else "default"
    )
    assert T.parse(name, num_slices=2).chips == 2 * chips


def test_topology_wrap_and_errors():
    assert T.parse("v5p-256").wrap == (True, True, True) and T.parse("v5p-64").wrap == (False,) * 3
    assert T.parse("v5e-256").wrap == (True, True, False) and T.parse("v5e-16").wrap == (False,) * 3
    for bad, why in (
        ("v5p-100", "known: v5p-8"),
        ("tpu9-8", "unknown TPU generation"),
        ("v5e:2x2x2", "2 dimensions"),
        ("v5p 256", "expected e.g."),
    ):
        with pytest.raises(T.TopologyError, match=why):
            T.parse(bad)


class FakeSearch:
    """Stands in for A.Search: 'fits' when the rows of one micro-batch stay under a limit; counts compiles."""

    def __init__(self, max_rows: int, budget: int = 99):
        self.max_rows, self.left, self.attempts = max_rows, budget, {}

    def __call__(self, batch, m):
        if (batch, m) not in self.attempts:
            self.left -= 1
            rows = batch // m
            self.attempts[(batch, m)] = A.Attempt(batch, m, rows <= self.max_rows, rows, {}, 1.0)
        return self.attempts[(batch, m)]

    @property
    def exhausted(self):
        return self.left <= 0


def test_microbatch_candidates_keep_every_micro_batch_evenly_sharded():
    assert A.microbatch_candidates(2304, 128) == [1, 2, 3, 6, 9, 18]
    assert A.microbatch_candidates(256, 128) == [1, 2]
    with pytest.raises(ValueError, match="not divisible by the 128 batch shards"):
        A.microbatch_candidates(100, 128)


@pytest.mark.parametrize(
    "max_rows,start,want", [(2304, 8, 1), (800, 8, 3), (300, 8, 9), (128, 1, 18), (1000, 1, 3)]
)
def test_fewest_microbatches(max_rows, start, want):
    s = FakeSearch(max_rows)
    best = A.fewest_microbatches(s, 2304, start, 128)
    assert best.fits and best.microbatches == want
    # doubling, then bisection over the 6 candidates (--max_compiles default 5)
    assert len(s.attempts) <= 5


def test_fewest_microbatches_reports_when_nothing_fits():
    best = A.fewest_microbatches(FakeSearch(64), 2304, 8, 128)
    assert not best.fits and best.microbatches == 18


@pytest.mark.parametrize("max_rows,want", [(1000, 960), (256, 256), (100, 64), (5000, 4096)])
def test_largest_batch(max_rows, want):  # 5000: the 8-compile budget stops the bisection at 64 x 64
    s = FakeSearch(max_rows, budget=8)
    best = A.largest_batch(s, 256, 1, 64)
    assert best.fits and best.batch_size == want, sorted(s.attempts)
    assert len(s.attempts) <= 8


def test_oom_message_parsing():
    # libtpu 0.0.42, seen on this host
    msg = (
        "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries (36.00G) "
        "exceeds available HBM (15.75G)."
    )
    assert A.oom_bytes(msg) == 36 * 2**30
    assert A.oom_bytes("Ran out of memory in memory space hbm. Used 120.50G of 95.74G hbm.") == int(
        120.5 * 2**30
    )
    assert A.oom_bytes("no figure") == 0
