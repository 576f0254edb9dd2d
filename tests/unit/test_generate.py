"""Batched generation (model/decode.py), the inference engine (infer.py) and the chat command.

Few compiles: the decode tests share one tiny model and one [4, 64] bucket (greedy, then sample);
the engine tests share one checkpoint with a SentencePiece tokenizer trained here.
"""

import contextlib
import dataclasses
import io
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsvl_jax.model import decode as D
from dsvl_jax.model import params as P
from dsvl_jax.model.sizes import model_config

import commands

BUCKET, BATCH, NEW = 64, 4, 8
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def random_params(cfg, seed=0):
    """Random weights drawn on the host (no init compile), spread enough that logits have clear maxima."""
    rng = np.random.default_rng(seed)
    flat = {}
    for path, a in P.flatten(P.abstract_params(cfg)).items():
        if path.endswith("scale"):  # norms
            x = 1 + 0.1 * rng.normal(size=a.shape)
        elif path.endswith("alpha"):  # SAM's hd_alpha (HF initialises it to 0)
            x = np.full(a.shape, 0.7)
        elif a.ndim >= 2:
            x = rng.normal(0, 0.1, a.shape)
        else:
            x = 0.05 * rng.normal(size=a.shape)
        flat[path] = jnp.asarray(x, a.dtype)
    return P.unflatten(flat)


@contextlib.contextmanager
def backend_compiles():
    events = []

    def listener(name, secs, **kw):
        if name == "/jax/core/compile/backend_compile_duration":
            events.append(kw.get("fun_name", "?"))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield events
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


@pytest.fixture(scope="module")
def tiny():
    cfg = model_config("tiny")
    return cfg, random_params(cfg, 0)


def _prompts(cfg, lengths, seed=0):
    """Left-padded ids/mask [B, max(lengths)], one image per row (per-sample pixels [B, 1, ...])."""
    rng = np.random.default_rng(seed)
    n, t = cfg.num_image_tokens, max(lengths)
    ids = np.zeros((len(lengths), t), np.int32)
    mask = np.zeros((len(lengths), t), np.int32)
    for r, length in enumerate(lengths):
        row = rng.integers(101, cfg.llm.vocab_size, length)
        row[2 : 2 + n] = cfg.image_token_id
        ids[r, t - length :], mask[r, t - length :] = row, 1
    px = rng.uniform(
        -1, 1, (len(lengths), 1, cfg.siglip.image_size, cfg.siglip.image_size, 3)
    ).astype(np.float32)
    hp = rng.normal(size=(len(lengths), 1, cfg.sam.image_size, cfg.sam.image_size, 3)).astype(
        np.float32
    )
    return ids, mask, px, hp


def _gen(cfg, params, batch, **kw):
    ids, mask, px, hp = batch
    return D.generate(
        cfg,
        params,
        ids,
        mask,
        px,
        hp,
        max_new_tokens=NEW,
        length_bucket=BUCKET,
        batch_size=BATCH,
        **kw,
    )


@pytest.fixture(scope="module")
def greedy(tiny):
    cfg, params = tiny
    batch = _prompts(cfg, [20, 33, 27])
    return batch, _gen(cfg, params, batch)


def test_varied_lengths_batched_equal_alone_and_share_one_program(tiny, greedy):
    cfg, params = tiny
    (ids, mask, px, hp), out = greedy
    assert out.shape == (3, NEW) and out.dtype == np.int32
    traces = D.trace_count()
    with backend_compiles() as compiles:
        for r in range(3):
            t = int(mask[r].sum())
            alone = D.generate(
                cfg,
                params,
                ids[r : r + 1, -t:],
                mask[r : r + 1, -t:],
                px[r : r + 1],
                hp[r : r + 1],
                max_new_tokens=NEW,
                length_bucket=BUCKET,
                batch_size=BATCH,
            )
            np.testing.assert_array_equal(alone[0], out[r])
    # Prompt lengths 20, 27, 33 (alone) and 33 (batched) all sit in the 64 bucket: nothing compiled.
    assert compiles == [] and D.trace_count() == traces
    assert len({tuple(r) for r in out}) == 3  # the rows really differ


def test_greedy_equals_greedy_generate(tiny, greedy):
    cfg, params = tiny
    (ids, mask, px, hp), out = greedy
    # At the bucket's shapes greedy_generate reuses generate's program (the filler row then decodes too).
    pids, pmask, ppx, php, _ = D.pad_to_bucket(ids, mask, px, hp, length=BUCKET, batch=BATCH)
    traces = D.trace_count()
    ref = D.greedy_generate(
        cfg, params, jnp.asarray(pids), jnp.asarray(pmask), ppx, php, max_new_tokens=NEW
    )
    np.testing.assert_array_equal(out, np.asarray(ref)[:3])
    assert D.trace_count() == traces


def test_stop_ids_end_rows(tiny, greedy):
    cfg, params = tiny
    batch, free = greedy
    stops = [int(free[0, 2]), int(free[1, 4])]
    out = _gen(cfg, params, batch, stop_ids=stops, pad_id=7)
    for r in range(3):
        hits = np.flatnonzero(np.isin(free[r], stops))
        end = int(hits[0]) + 1 if hits.size else NEW
        np.testing.assert_array_equal(out[r, :end], free[r, :end])
        assert (out[r, end:] == 7).all()
    assert (out[0, 3:] == 7).all() and (out[1, 5:] == 7).all()


def test_sampling_reproducible_and_greedy_limits(tiny, greedy):
    cfg, params = tiny
    batch, free = greedy
    a = _gen(cfg, params, batch, temperature=1.0, top_p=0.9, rng=3)
    b = _gen(cfg, params, batch, temperature=1.0, top_p=0.9, rng=3)
    c = _gen(cfg, params, batch, temperature=1.0, top_p=0.9, rng=4)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any() and (a != free).any()
    # row 0 alone (shorter, more padding) draws the same tokens: keys are per row
    ids, mask, px, hp = batch
    t = int(mask[0].sum())
    alone = _gen(
        cfg,
        params,
        (ids[:1, -t:], mask[:1, -t:], px[:1], hp[:1]),
        temperature=1.0,
        top_p=0.9,
        rng=3,
    )
    np.testing.assert_array_equal(alone[0], a[0])
    # temperature -> 0 and a nucleus holding only the top token both reduce to greedy (same program).
    np.testing.assert_array_equal(_gen(cfg, params, batch, temperature=1e-6, rng=3), free)
    np.testing.assert_array_equal(
        _gen(cfg, params, batch, temperature=1.0, top_p=1e-6, rng=5), free
    )


def test_nucleus_filter_keeps_the_smallest_set_reaching_top_p():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))

    def kept(p):
        return np.isfinite(np.asarray(D.nucleus_filter(logits, jnp.float32(1), jnp.float32(p))))[0]

    assert kept(0.5).tolist() == [True, False, False, False]
    assert kept(0.6).tolist() == [True, True, False, False]
    assert kept(0.95).tolist() == [True, True, True, False]
    assert kept(1.0).all()


def test_generate_rejects_bad_requests(tiny):
    cfg, params = tiny
    ids, mask = np.ones((1, 4), np.int32), np.array([[1, 1, 1, 0]], np.int32)
    with pytest.raises(ValueError, match="left-padded"):
        D.generate(cfg, params, ids, mask, max_new_tokens=2)
    with pytest.raises(ValueError, match="top_p"):
        D.generate(
            cfg, params, ids, np.ones_like(ids), max_new_tokens=2, temperature=1.0, top_p=0.0
        )
    with pytest.raises(ValueError, match="batch_size"):
        D.generate(cfg, params, ids, np.ones_like(ids), max_new_tokens=2, batch_size=0)


# --- engine + chat command ---------------------------------------------------------------------------

QUESTION = "What is the value for 2017?"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny checkpoint (vocab 512, image id 4) holding a SentencePiece tokenizer trained on the corpus."""
    from dsvl_jax.checkpoints import save_params
    from dsvl_jax.data import corpus, tokenizer

    d = tmp_path_factory.mktemp("chat")
    examples = [
        *corpus.generate("chart", 40, 0, image_size=64),
        *corpus.generate("caption", 40, 0, image_size=64),
    ]
    tokenizer.train_on_examples(examples, 400, out=d / "trained.model")
    base = model_config("tiny")
    cfg = dataclasses.replace(
        base, llm=dataclasses.replace(base.llm, vocab_size=512), image_token_id=4
    )
    out = d / "ckpt"
    save_params(str(out), cfg, random_params(cfg, 1))
    shutil.copy(d / "trained.model", out / "tokenizer.model")
    image = d / "chart.png"
    image.write_bytes(examples[0].images[0])
    return out, image


@pytest.fixture(scope="module")
def engine(ckpt):
    from dsvl_jax.infer import Engine

    # the batch of the (2, 2, 2) mesh below: one program each
    return Engine.load(ckpt[0], batch_size=4)


@pytest.fixture(scope="module")
def answer(engine, ckpt):
    return engine.chat([QUESTION], [[ckpt[1].read_bytes()]], max_new_tokens=NEW)[0]


def test_engine_sharded_gives_the_same_tokens(engine, ckpt):
    from dsvl_jax.infer import Engine

    sharded = Engine.load(ckpt[0], mesh_shape=(2, 2, 2))
    q = sharded.params["llm"]["blocks"]["q"]["kernel"]
    assert len(q.sharding.device_set) == 8 and not q.sharding.is_fully_replicated
    convs = [QUESTION, [{"role": "user", "content": "Describe the image."}]]
    prompts = engine.prompts(convs, [[ckpt[1]], [ckpt[1].read_bytes()]])
    a = engine.generate_ids(prompts, max_new_tokens=NEW)
    b = sharded.generate_ids(prompts, max_new_tokens=NEW)
    np.testing.assert_array_equal(a, b)
    # 400-piece tokenizer, 512-row embedding: ids stay decodable
    assert a.max() < engine.tokenizer.vocab_size


def test_engine_checks_requests(engine, ckpt):
    from dsvl_jax.infer import InferenceError

    with pytest.raises(InferenceError, match="2 image"):
        engine.prompts(["<image_placeholder> one tag"], [[ckpt[1], ckpt[1]]])
    with pytest.raises(InferenceError, match="end with a user message"):
        engine.prompts([[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]])


def _chat(*args, stdin=None):
    return commands.run("chat", *args, stdin=stdin, timeout=300)


def test_chat_cli_answers_like_the_engine(ckpt, answer):
    res = _chat(
        "--checkpoint", str(ckpt[0]), "--image", str(ckpt[1]), f"--max_new_tokens={NEW}", QUESTION
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout == answer + "\n"


def test_chat_cli_missing_image_is_one_line_error(ckpt, tmp_path):
    missing = tmp_path / "nope.png"
    res = _chat("--checkpoint", str(ckpt[0]), "--image", str(missing), QUESTION)
    assert res.returncode == 2
    assert res.stderr.strip() == f"chat: error: image {missing} not found"


def test_chat_interactive_loop(engine, ckpt, answer, tmp_path):
    """/image attaches to the next question, a bad path is reported and the session goes on, '' quits."""
    from dsvl_jax.cli.chat import interactive

    asked = []

    def ask(messages, images):
        asked.append((messages, images))
        return engine.chat([messages], [images], max_new_tokens=NEW)[0]

    lines = io.StringIO(
        f"/image {tmp_path / 'nope.png'}\n/image {ckpt[1]}\n{QUESTION}\n\nnot read\n"
    )
    out, err = io.StringIO(), io.StringIO()
    interactive(ask, [], lines, out, err)
    assert out.getvalue() == answer + "\n"
    assert "nope.png not found" in err.getvalue()
    assert len(asked) == 1 and len(asked[0][1]) == 1


# --- top-k, repetition penalty, stop strings, streaming --------------------------------------------


def test_new_options_off_keep_greedy_in_the_same_program(tiny, greedy):
    """`greedy` is today's greedy output (HF parity: tests/parity); the new options leave it alone."""
    cfg, params = tiny
    batch, free = greedy
    traces = D.trace_count()
    np.testing.assert_array_equal(_gen(cfg, params, batch, top_k=0, repetition_penalty=1.0), free)
    np.testing.assert_array_equal(_gen(cfg, params, batch, top_k=3), free)  # greedy ignores top-k
    # top_k = 1 leaves one token to sample: the argmax, whatever the temperature and seed
    np.testing.assert_array_equal(_gen(cfg, params, batch, temperature=1.5, top_k=1, rng=7), free)
    assert D.trace_count() == traces  # every value is traced


def test_repetition_penalty_moves_greedy_off_seen_tokens(tiny, greedy):
    cfg, params = tiny
    batch, free = greedy
    ids, mask = batch[:2]
    assert any(len(set(r)) < NEW for r in free.tolist())  # the random model repeats itself
    pen = _gen(cfg, params, batch, repetition_penalty=1.5)
    changed = 0
    for r in range(3):
        diff = np.flatnonzero(pen[r] != free[r])
        if diff.size:
            # the first change: greedy's token was seen (prompt or answer), the new one was not
            # (the penalty keeps the order among seen tokens and leaves unseen ones alone)
            j, changed = int(diff[0]), changed + 1
            seen = set(ids[r][mask[r] > 0].tolist()) | set(free[r, :j].tolist())
            assert free[r, j] in seen and pen[r, j] not in seen
    assert changed >= 2
    repeats = sum(NEW - len(set(r)) for r in free.tolist())
    assert sum(NEW - len(set(r)) for r in pen.tolist()) < repeats


def test_generate_chunks_end_with_generate_tokens(tiny, greedy):
    cfg, params = tiny
    batch, free = greedy
    ids, mask, px, hp = batch
    kw = dict(max_new_tokens=NEW, length_bucket=BUCKET, batch_size=BATCH)
    chunks = list(D.generate_chunks(cfg, params, ids, mask, px, hp, chunk_tokens=3, **kw))
    assert [c.steps for c in chunks] == [1, 4, 7, 8]
    for c in chunks:
        np.testing.assert_array_equal(c.tokens[:, : c.steps], free[:, : c.steps])
    np.testing.assert_array_equal(chunks[-1].tokens, free)
    sampled = dict(temperature=1.0, top_k=20, top_p=0.9, repetition_penalty=1.2, rng=3)
    *_, last = D.generate_chunks(cfg, params, ids, mask, px, hp, chunk_tokens=2, **kw, **sampled)
    np.testing.assert_array_equal(last.tokens, _gen(cfg, params, batch, **sampled))


def test_chat_streams_pieces_that_make_the_answer(engine, ckpt, answer):
    img = ckpt[1].read_bytes()
    pieces = []
    got = engine.chat(
        [QUESTION], [[img]], NEW, stream=lambda i, p: pieces.append((i, p)), chunk_tokens=1
    )
    assert got == [answer] and len(pieces) > 1
    assert {i for i, _ in pieces} == {0} and "".join(p for _, p in pieces) == answer
    # a batch, sampled: each conversation's pieces make its non-streamed answer
    convs, imgs = [QUESTION, "Describe the image."], [[img], [img]]
    opts = dict(max_new_tokens=NEW, temperature=1.0, top_k=50, repetition_penalty=1.3, seed=2)
    want = engine.chat(convs, imgs, **opts)
    joined = ["", ""]
    for i, piece in engine.chat_stream(convs, imgs, chunk_tokens=3, **opts):
        joined[i] += piece
    assert joined == want and want[0] != answer


def test_chat_stop_strings_cut_the_answer(engine, ckpt, answer):
    img = [[ckpt[1].read_bytes()]]
    k = len(answer) // 2
    stop = answer[k : k + 2]
    want = answer[: answer.find(stop)].strip()
    assert len(want) < len(answer)
    assert engine.chat([QUESTION], img, NEW, stop=[stop, "never there"]) == [want]
    assert "".join(p for _, p in engine.chat_stream([QUESTION], img, NEW, stop=[stop])) == want
    assert (
        engine.decode_answer(
            engine.generate_ids(engine.prompts([QUESTION], img), max_new_tokens=NEW)[0], [stop]
        )
        == want
    )


def test_chat_interactive_streams(engine, ckpt, answer):
    from dsvl_jax.cli.chat import interactive, unescape

    def ask(messages, images):
        return (p for _, p in engine.chat_stream([messages], [images], NEW, chunk_tokens=2))

    out, err = io.StringIO(), io.StringIO()
    interactive(ask, [ckpt[1]], io.StringIO(f"{QUESTION}\n"), out, err)
    assert out.getvalue() == answer + "\n" and err.getvalue() == ""
    # a request error at the first piece: reported, nothing printed, the session goes on
    out = io.StringIO()
    interactive(ask, [ckpt[1], ckpt[1]], io.StringIO("<image_placeholder> q\n"), out, err)
    assert out.getvalue() == "" and "2 image" in err.getvalue()
    assert unescape(r"\n\nUser:\t\\n") == "\n\nUser:\t\\n"


def test_chat_cli_checks_sampling_flags_before_loading(ckpt):
    """(The flags' effect is the engine's, tested above; a full CLI run costs ~30 s.)"""
    res = _chat("--checkpoint", str(ckpt[0]), "--top_k=-1", "--stop=x", "--nostream", QUESTION)
    assert res.returncode == 2
    assert res.stderr.strip() == "chat: error: --top_k=-1: expected >= 0 (0 = off)"
