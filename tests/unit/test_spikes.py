"""The loss-spike guard alone (train/spikes.py): when it arms, what counts as a spike, what a blip is,
its state through a checkpoint's meta, the rollback limit, and the config checks."""

import json
import math
import types

import pytest

from dsvl_jax.config import base_config
from dsvl_jax.errors import ConfigError
from dsvl_jax.train.spikes import Spike, SpikeError, SpikeGuard, check_config


def _feed(g: SpikeGuard, losses, start: int = 1):
    """Observe losses at steps start, start+1, ...; -> the spikes reported, by step."""
    return {s: sp for s, x in enumerate(losses, start) if (sp := g.observe(s, x)) is not None}


def test_off_by_default():
    g = SpikeGuard.from_config(base_config("tiny").train)
    assert not g.enabled
    assert _feed(g, [1.0] * 5 + [100.0] * 10) == {} and not g.suspect


def test_a_spike_needs_a_full_window_then_patience_steps_in_a_row():
    g = SpikeGuard(factor=2.0, patience=2, window=3, max_rollbacks=1)
    # steps 1-3 fill the window (mean 2.0): a high loss before that is no spike
    assert _feed(g, [10.0]) == {}
    g = SpikeGuard(factor=2.0, patience=2, window=3, max_rollbacks=1)
    got = _feed(g, [2.0, 2.0, 2.0, 4.5, 5.0])
    assert got == {5: Spike(first=4, last=5, losses=(4.5, 5.0), mean=2.0)}


def test_a_blip_is_forgiven_and_stays_out_of_the_mean():
    g = SpikeGuard(factor=2.0, patience=2, window=3, max_rollbacks=1)
    assert _feed(g, [2.0, 2.0, 2.0, 9.0, 2.0, 9.0, 2.0]) == {}
    assert list(g.recent) == [2.0, 2.0, 2.0] and not g.suspect


def test_the_mean_follows_a_falling_loss():
    """Early training: the loss falls fast, every step is below the (lagging) mean: never a spike."""
    g = SpikeGuard(factor=1.5, patience=1, window=4, max_rollbacks=1)
    assert _feed(g, [8.0 * 0.9**k for k in range(50)]) == {}
    assert math.isclose(g.mean(), sum(8.0 * 0.9**k for k in range(46, 50)) / 4)


def test_non_finite_losses_are_left_to_the_step_guard():
    g = SpikeGuard(factor=2.0, patience=1, window=1, max_rollbacks=1)
    assert _feed(g, [1.0, math.nan, math.inf, 1.0]) == {}
    assert list(g.recent) == [1.0]


def test_the_state_round_trips_through_a_checkpoints_json_meta():
    g = SpikeGuard(factor=2.0, patience=3, window=3, max_rollbacks=5)
    _feed(g, [2.0, 2.0, 2.0, 5.0])  # a streak is open at step 4
    g.rollbacks = 2
    again = SpikeGuard(factor=2.0, patience=3, window=3, max_rollbacks=5)
    again.load(json.loads(json.dumps(g.state())))
    assert again.state() == json.loads(json.dumps(g.state())) and again.suspect
    # the resumed guard judges the next steps as the uninterrupted one does
    assert _feed(again, [6.0, 6.0], start=5) == _feed(g, [6.0, 6.0], start=5) != {}


def test_a_rollback_takes_the_checkpoints_guard_and_counts_on():
    g = SpikeGuard(factor=2.0, patience=1, window=2, max_rollbacks=2)
    _feed(g, [1.0, 1.0, 1.0, 3.0])
    g.rolled_back({"recent": [4.0, 4.0], "streak": [], "rollbacks": 0})
    assert list(g.recent) == [4.0, 4.0] and not g.suspect and g.rollbacks == 1
    g.rolled_back({"recent": [4.0, 4.0], "streak": [], "rollbacks": 0})
    assert g.rollbacks == 2
    with pytest.raises(SpikeError, match=r"3 loss-spike rollbacks in this run \(train.spike_max"):
        g.rolled_back({})


def test_forgive_makes_the_spike_the_new_normal():
    g = SpikeGuard(factor=2.0, patience=2, window=2, max_rollbacks=1)
    assert _feed(g, [1.0, 1.0, 3.0, 3.0]) != {}
    g.forgive()
    assert list(g.recent) == [3.0, 3.0] and not g.suspect
    assert _feed(g, [3.0, 3.0], start=5) == {}


@pytest.mark.parametrize(
    "field, value",
    [
        ("spike_patience", -1),
        ("spike_patience", 1.5),
        ("spike_factor", 1.0),
        ("spike_factor", math.inf),
        ("spike_window", 0),
        ("spike_max_rollbacks", -1),
    ],
)
def test_bad_spike_fields_are_refused_by_name(field, value):
    t = dict(base_config("tiny").train.to_dict(), spike_patience=2)
    t[field] = value
    with pytest.raises(ConfigError, match=rf"^train.{field}="):
        check_config(types.SimpleNamespace(get=t.get, **t))


def test_the_shipped_defaults_pass():
    check_config(base_config("tiny").train)
    t = base_config("tiny").train
    t.spike_patience = 5
    check_config(t)
