"""dsvl_jax vs HuggingFace transformers, float32, on tiny random models of both classes.

Tolerance: 1e-4 max abs on logits and on every part's output (observed ~5e-6 on CPU).
"""

import numpy as np
import torch

from dsvl_jax import api

import hf_oracle

TOL = 1e-4


def _hf_inputs(b):
    return {k: torch.tensor(v) for k, v in b.items()}


def test_logits_match_hf(converted):
    b = hf_oracle.batch(converted["hybrid"])
    with torch.no_grad():
        ref = converted["model"](
            **_hf_inputs(b), position_ids=torch.tensor(hf_oracle.position_ids(b["attention_mask"]))
        ).logits.numpy()
    ours = api.forward(converted["cfg"], converted["params"], **b)
    valid = b["attention_mask"].astype(bool)
    diff = np.abs(ours - ref)[valid].max()
    print(
        f"{converted['variant']}: logits max|diff| = {diff:.2e} (max|logit| {np.abs(ref).max():.2f})"
    )
    assert ours.shape == ref.shape
    assert diff < TOL
    # The left-padded row really has padding, and its logits were compared at real positions only.
    assert (~valid).sum() > 0


def test_each_part_matches_hf(converted):
    b = hf_oracle.batch(converted["hybrid"])
    m = converted["model"].model
    feats = api.image_features(
        converted["cfg"], converted["params"], b["pixel_values"], b.get("high_res_pixel_values")
    )
    with torch.no_grad():
        pv = torch.tensor(b["pixel_values"])
        low = m.vision_model(pv).last_hidden_state
        parts = {"siglip": low.numpy()}
        if converted["hybrid"]:
            high = m.get_high_res_image_features(
                torch.tensor(b["high_res_pixel_values"])
            ).last_hidden_state
            parts["sam"] = high.numpy()
            parts["adaptor"] = m.aligner(low, high).numpy()
        else:
            parts["adaptor"] = m.aligner(low).numpy()
    assert set(feats) == set(parts)
    for name, ref in parts.items():
        diff = np.abs(feats[name] - ref).max()
        print(f"{converted['variant']}: {name} max|diff| = {diff:.2e}")
        assert feats[name].shape == ref.shape, name
        assert diff < TOL, name


def test_greedy_generation_matches_hf(converted):
    b = hf_oracle.batch(converted["hybrid"], seed=1)
    n = 16
    with torch.no_grad():
        out = converted["model"].generate(
            **_hf_inputs(b),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    ref = out[:, b["input_ids"].shape[1] :].numpy()
    ours = api.generate(converted["cfg"], converted["params"], **b, max_new_tokens=n)
    assert ours.shape == (2, n)
    np.testing.assert_array_equal(ours, ref)


def test_kv_cache_decoding_agrees_with_full_forward(converted):
    """Teacher-forced logits over prompt + generated tokens pick the same tokens the cache path did."""
    b = hf_oracle.batch(converted["hybrid"], seed=2)
    cfg, params = converted["cfg"], converted["params"]
    new = api.generate(cfg, params, **b, max_new_tokens=8)
    ids = np.concatenate([b["input_ids"], new], 1)
    mask = np.concatenate([b["attention_mask"], np.ones_like(new)], 1)
    logits = api.forward(cfg, params, ids, b["pixel_values"], b.get("high_res_pixel_values"), mask)
    t = b["input_ids"].shape[1]
    np.testing.assert_array_equal(logits[:, t - 1 : -1].argmax(-1), new)


def test_eos_stops_rows(converted):
    b = hf_oracle.batch(converted["hybrid"], seed=1)
    cfg, params = converted["cfg"], converted["params"]
    free = api.generate(cfg, params, **b, max_new_tokens=6)
    eos = int(free[0, 1])
    stopped = api.generate(cfg, params, **b, max_new_tokens=6, eos_token_id=eos, pad_token_id=7)
    first = int(np.argmax(free[0] == eos))
    np.testing.assert_array_equal(stopped[0, : first + 1], free[0, : first + 1])
    assert (stopped[0, first + 1 :] == 7).all()
