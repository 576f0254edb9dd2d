"""Shared pieces for the sharding tests: a tiny all-trainable config and one synthetic batch."""

import jax
import pytest

from dsvl_jax.config import base_config
from dsvl_jax.data.synthetic import synthetic_batch
from dsvl_jax.model.config import model_config_from_dict

ALL_GROUPS = ("llm", "adaptor", "sam_adaptor", "siglip", "sam_trunk")


def make_config(trainable=ALL_GROUPS, ici=None, **train):
    c = base_config("tiny")
    c.train.trainable = trainable
    c.train.batch_size, c.train.seq_len = 8, 32
    for k, v in train.items():
        setattr(c.train, k, v)
    if ici:
        c.parallel.ici = dict(zip(("data", "fsdp", "tensor"), ici))
    return c


@pytest.fixture(scope="session")
def tiny_model_cfg():
    return model_config_from_dict(base_config("tiny").model)


@pytest.fixture(scope="session")
def batch_np(tiny_model_cfg):
    return synthetic_batch(tiny_model_cfg, 8, 32, pad=5, seed=3)


@pytest.fixture(scope="session")
def devices():
    assert jax.device_count() == 8, (
        "tests expect XLA_FLAGS=--xla_force_host_platform_device_count=8"
    )
    return jax.devices()
