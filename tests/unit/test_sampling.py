"""The token-choice transforms of model/decode.py against numpy and HF references, and the
incremental detokeniser of infer.py (stop strings, held-back text) on a byte-level tokenizer.

No model here: generation end to end (greedy unchanged, top_k=1, repetition penalty, stop strings,
streaming) is tested in test_generate.py, where the compiled programs are shared.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from dsvl_jax.infer import AnswerText
from dsvl_jax.model import decode as D


def _logits(seed=0, shape=(3, 50)):
    rng = np.random.default_rng(seed)
    return rng.normal(0, 2, shape).astype(np.float32)


def penalty_reference(logits, seen, penalty):
    """CTRL (Keskar et al. 2019) as HF implements it: seen positive logits / penalty, negative * penalty."""
    out = logits.copy()
    x = logits[seen]
    out[seen] = np.where(x > 0, x / penalty, x * penalty)
    return out


def filter_reference(logits, temperature, top_p, top_k):
    """Row by row: / temperature, keep the top k, then the smallest set reaching top_p (ties with
    the last token kept are kept)."""
    out = np.full_like(logits, -np.inf)
    for r, row in enumerate(logits / temperature):
        srt = np.sort(row)[::-1]
        k = len(row) if top_k == 0 else min(top_k, len(row))
        srt = srt[srt >= srt[k - 1]]
        p = np.exp(srt - srt.max())
        p /= p.sum()
        last = srt[np.cumsum(p) - p < top_p][-1]
        out[r] = np.where(row >= last, row, -np.inf)
    return out


@pytest.mark.parametrize("penalty", [1.3, 0.7, 2.0])
def test_repetition_penalty_matches_numpy(penalty):
    logits = _logits()
    seen = np.random.default_rng(1).random(logits.shape) < 0.4
    got = np.asarray(D.apply_repetition_penalty(jnp.asarray(logits), jnp.asarray(seen), penalty))
    np.testing.assert_allclose(got, penalty_reference(logits, seen, penalty), rtol=1e-6)
    if penalty > 1:  # every seen logit went down, every other one stayed
        assert (got[seen] < logits[seen]).all() and (got[~seen] == logits[~seen]).all()


def test_repetition_penalty_one_is_the_identity_bit_for_bit():
    logits = _logits()
    logits[0, :3] = [0.0, -0.0, np.inf]
    got = np.asarray(
        D.apply_repetition_penalty(jnp.asarray(logits), jnp.ones(logits.shape, bool), 1)
    )
    np.testing.assert_array_equal(got.view(np.uint32), logits.view(np.uint32))


@pytest.mark.parametrize(
    "temperature,top_p,top_k", [(1.0, 1.0, 5), (0.7, 0.8, 0), (1.3, 0.9, 7), (1.0, 0.5, 1)]
)
def test_filter_logits_matches_numpy(temperature, top_p, top_k):
    logits = _logits(2)
    logits[1, 10:14] = logits[1].max() - 0.5  # ties at the k-th value are kept
    got = D.filter_logits(jnp.asarray(logits), jnp.float32(temperature), jnp.float32(top_p), top_k)
    want = filter_reference(logits, temperature, top_p, top_k)
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
    np.testing.assert_allclose(
        np.asarray(got)[np.isfinite(want)], want[np.isfinite(want)], rtol=1e-6
    )


def test_top_k_off_is_the_nucleus_filter_bit_for_bit():
    x = jnp.asarray(_logits(3))
    a = D.filter_logits(x, jnp.float32(0.8), jnp.float32(0.9), 0)
    b = D.filter_logits(x, jnp.float32(0.8), jnp.float32(0.9), x.shape[-1] + 5)  # k >= V: all
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_transforms_match_hf_processors():
    torch = pytest.importorskip("torch")
    lp = pytest.importorskip("transformers.generation.logits_process")
    logits = _logits(4, (2, 64))
    ids = np.array([[1, 5, 5, 9, 40], [2, 3, 63, 0, 7]])
    seen = np.zeros(logits.shape, bool)
    np.put_along_axis(seen, ids, True, axis=1)
    t_ids, t_logits = torch.tensor(ids), torch.tensor(logits)
    hf = lp.RepetitionPenaltyLogitsProcessor(1.4)(t_ids, t_logits.clone()).numpy()
    ours = np.asarray(D.apply_repetition_penalty(jnp.asarray(logits), jnp.asarray(seen), 1.4))
    np.testing.assert_allclose(ours, hf, rtol=1e-6)
    x = lp.TemperatureLogitsWarper(0.8)(t_ids, torch.tensor(hf))
    x = lp.TopKLogitsWarper(6)(t_ids, x)
    x = lp.TopPLogitsWarper(0.85)(t_ids, x).numpy()
    got = np.asarray(D.filter_logits(jnp.asarray(hf), jnp.float32(0.8), jnp.float32(0.85), 6))
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(x))


# --- incremental detokenisation -----------------------------------------------------------------


class ByteTokenizer:
    """ids = UTF-8 bytes (+ EOS 256): a prefix can end inside a character, as byte-fallback pieces do."""

    vocab_size, eos_id = 257, 256

    def decode(self, ids, *, skip_special=False):
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def _stream(text, stop=(), step=1, eos=True):
    ids = list(text.encode()) + ([256] if eos else [])
    t = AnswerText(ByteTokenizer(), stop)
    pieces = []
    for n in range(step, len(ids) + step, step):
        final = n >= len(ids)
        pieces.append(t.update(ids[:n], final))
        if t.answer is not None:
            break
    return [p for p in pieces if p], t.answer


@pytest.mark.parametrize("step", [1, 2, 5])
def test_pieces_concatenate_to_the_answer_never_splitting_a_character(step):
    text = "  Le café coûte 3 €, 中文字  \n"
    pieces, answer = _stream(text, step=step)
    assert answer == text.strip() and "".join(pieces) == answer
    assert len(pieces) > 3 and not any("\ufffd" in p for p in pieces)


@pytest.mark.parametrize("step", [1, 3])
def test_stop_strings_cut_the_answer_before_them(step):
    text = "The value is 94.\n\nUser: and 2018?\n\nAssistant: 12"
    pieces, answer = _stream(text, stop=["\n\nUser:", "Assistant"], step=step)
    assert answer == "The value is 94." and "".join(pieces) == answer
    # a prefix of a stop string is held back, then given when it turns out not to be one
    pieces, answer = _stream("a\n\nb\n\nUser: c", stop=["\n\nUser:"], step=step)
    assert answer == "a\n\nb" and "".join(pieces) == answer
    # the first occurrence of any stop string wins; none: the whole (stripped) text
    assert _stream("x END y STOP", stop=["STOP", "END"])[1] == "x"
    assert _stream("no stop here ", stop=["STOP"])[1] == "no stop here"


def test_answer_text_without_eos_or_stop_is_final_only_when_told():
    t = AnswerText(ByteTokenizer(), ["!"])
    assert t.update(list(b"hi there"), final=False) == "hi there" and t.answer is None
    assert t.update(list(b"hi there."), final=True) == "." and t.answer == "hi there."


def test_greedy_with_repetition_penalty_matches_hf_generate(tmp_path):
    """End to end on a tiny random HF model (the parity oracle): our decode = HF `generate`."""
    torch = pytest.importorskip("torch")
    from dsvl_jax import api
    from dsvl_jax.checkpoints import from_hf

    import hf_oracle

    model = hf_oracle.build("siglip_mha_tied")
    model.save_pretrained(tmp_path / "hf")
    from_hf(str(tmp_path / "hf"), str(tmp_path / "ckpt"))
    cfg, params = api.load(str(tmp_path / "ckpt"))
    b = hf_oracle.batch(False, seed=1)
    px = jnp.asarray(b["pixel_values"].transpose(0, 2, 3, 1))[:, None]  # [B, 1, S, S, 3]
    n, got = 16, {}
    for penalty in (1.0, 1.3):
        with torch.no_grad():
            out = model.generate(
                **{k: torch.tensor(v) for k, v in b.items()},
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
                repetition_penalty=penalty,
            )
        ref = out[:, b["input_ids"].shape[1] :].numpy()
        got[penalty] = np.asarray(
            D.decode(
                cfg,
                params,
                b["input_ids"],
                b["attention_mask"],
                px,
                max_new_tokens=n,
                repetition_penalty=penalty,
            )
        )
        np.testing.assert_array_equal(got[penalty], ref)
    assert (got[1.3] != got[1.0]).any()
