"""The grain pipeline end to end: ArrayRecord shards + SentencePiece -> packed dual-resolution batches."""

import io

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from dsvl_jax.config import base_config
from dsvl_jax.data import builders, pipeline, shards, tokenizer
from dsvl_jax.data.mixture import MULTIMODAL, TEXT
from dsvl_jax.data.records import IMAGE_TAG, Example, Message

KINDS = ("chart", "ocr", "caption", "text")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    dirs = builders.generate_corpus(KINDS, str(root), n=12, seed=0, image_size=64)
    examples = [shards.open_source(d)[i] for d in dirs.values() for i in range(12)]
    tokenizer.train_on_examples(examples, 400, out=str(root / "tok.model"))
    return root, dirs


def _cfg(root, **data):
    c = base_config("tiny")
    c.model.llm.vocab_size = 512
    c.model.image_token_id = tokenizer.SP_IMAGE_ID
    c.train.batch_size, c.train.seq_len, c.train.images_per_sample = 4, 128, 2
    c.data.tokenizer = str(root / "tok.model")
    c.data.system_prompt = ""
    c.data.num_threads = 1
    for k, v in data.items():
        setattr(c.data, k, v)
    return c


def _sources(dirs):
    return [
        pipeline.SourceSpec(k, shards.open_source(d), 1.0, TEXT if k == "text" else MULTIMODAL)
        for k, d in dirs.items()
    ]


def test_batches_have_fixed_shapes_and_uint8_views(corpus):
    root, dirs = corpus
    c = _cfg(root)
    for kind, d in dirs.items():
        c.data.sources[kind] = {"path": d, "weight": 1.0}
    it = iter(pipeline.build(c))  # sources from the config, groups from the records
    b = next(it)
    assert (
        b["ids"].shape == (4, 128)
        and b["pixels"].shape == (4, 2, 32, 32, 3)
        and b["pixels"].dtype == np.uint8
    )
    assert b["high_pixels"].shape == (4, 2, 64, 64, 3)
    assert [s.group for s in pipeline.open_configured_sources(c.data)] == [MULTIMODAL] * 3 + [TEXT]
    for _ in range(5):
        b = next(it)
        n_img = (b["ids"] == 4).sum(1) // 16
        assert np.all((b["ids"] == 4).sum(1) % 16 == 0) and np.all(n_img <= 2)
        # an image slot holds pixels exactly when the row has that many image-token runs
        used = b["pixels"].reshape(4, 2, -1).any(-1).sum(1)
        assert np.all(used <= n_img)


def test_loss_mask_covers_answers_only(corpus):
    """Chart records are SFT conversations: supervised targets decode to the answers (+ EOS) and nothing else."""
    root, dirs = corpus
    c = _cfg(root, pack=False)
    src = shards.open_source(dirs["chart"])
    it = iter(pipeline.build(c, sources=[pipeline.SourceSpec("chart", src, 1.0, MULTIMODAL)]))
    tok = tokenizer.load_tokenizer(str(root / "tok.model"))
    b = next(it)
    answers = [
        " ".join(m.content.strip() for m in src[i].messages if m.role == "assistant")
        for i in range(12)
    ]
    for r in range(4):
        sup = b["targets"][r][b["loss_mask"][r] > 0].tolist()
        assert sup and sup[-1] == tok.eos_id
        text = tok.decode([t for t in sup if t != tok.eos_id]).split()
        assert " ".join(text) in answers
        assert not np.any(b["targets"][r][b["loss_mask"][r] > 0] == 4)


def test_restore_from_a_saved_iterator_continues_with_the_same_samples(corpus, tmp_path):
    root, dirs = corpus
    c = _cfg(root, modality_warmup_steps=6)
    it = iter(pipeline.build(c, sources=_sources(dirs)))
    for _ in range(3):
        next(it)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.save(3, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
        expected = [next(it) for _ in range(4)]
        fresh = iter(pipeline.build(c, sources=_sources(dirs)))
        mngr.restore(
            3, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointRestore(fresh))
        )
    for a, b in zip(expected, (next(fresh) for _ in range(4))):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_hosts_read_disjoint_parts_that_cover_the_source(corpus):
    _, dirs = corpus
    spec = _sources(dirs)[0]
    n = len(spec.data)
    seen = []
    for host in range(2):
        ds = pipeline.source_dataset(
            spec,
            0,
            lambda ex: ex.id,
            seed=0,
            host=host,
            hosts=2,
            read=grain.ReadOptions(num_threads=1),
        )
        it = iter(ds)
        seen.append({next(it) for _ in range(n // 2)})
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == {spec.data[i].id for i in range(n)}


def _png(size=(40, 30), color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def test_planted_bad_records_are_skipped_and_reported_exactly(corpus):
    root, _ = corpus
    good = _png()
    huge = io.BytesIO()
    Image.new("1", (9000, 9000)).save(huge, "PNG")  # small file, 81 M pixels

    def cap(i, img):
        return Example(f"bad-{i}", "caption", (Message("text", IMAGE_TAG + "a red box"),), (img,))

    planted = {
        "bad-empty": (cap("empty", b""), "image_empty"),
        "bad-trunc": (cap("trunc", good[: len(good) // 2]), "image_corrupt"),
        "bad-notimg": (cap("notimg", b"just some text, not a PNG"), "not_an_image"),
        "bad-huge": (cap("huge", huge.getvalue()), "image_too_large"),
        "bad-conv": (
            Example("bad-conv", "chart", (Message("assistant", IMAGE_TAG + "hi"),), (good,)),
            "bad_conversation",
        ),
        "bad-count": (
            Example(
                "bad-count", "caption", (Message("text", "two tags " + IMAGE_TAG * 2),), (good,)
            ),
            "image_count_mismatch",
        ),
    }
    data = [cap(f"ok{i}", good) for i in range(14)]
    for i, (ex, _) in enumerate(planted.values()):
        data.insert(2 * i + 1, ex)
    c = _cfg(root, max_skip_rate=0.5, min_seen=1000)
    it = iter(pipeline.build(c, sources=[pipeline.SourceSpec("caps", data, 1.0, MULTIMODAL)]))
    while pipeline.iterator_stats(it)["caps"]["seen"] < len(data):
        next(it)
    st = pipeline.iterator_stats(it)["caps"]
    first_epoch = st["skipped_ids"][: len(planted)]
    assert sorted(map(tuple, first_epoch)) == sorted((k, r) for k, (_, r) in planted.items())
    assert sum(st["skipped"].values()) >= len(planted)


def test_skip_rate_cap_stops_with_the_source_named(corpus):
    root, _ = corpus
    data = [
        Example(f"e{i}", "caption", (Message("text", IMAGE_TAG + "x"),), (b"broken",))
        for i in range(10)
    ]
    data.append(Example("fine", "caption", (Message("text", IMAGE_TAG + "fine"),), (_png(),)))
    c = _cfg(root, max_skip_rate=0.2, min_seen=5)
    it = iter(
        pipeline.build(c, sources=[pipeline.SourceSpec("broken_caps", data, 1.0, MULTIMODAL)])
    )
    with pytest.raises(pipeline.DataError, match="source 'broken_caps'.*max_skip_rate=20.0%"):
        next(it)


def test_tokenizer_and_model_must_agree(corpus):
    root, dirs = corpus
    c = _cfg(root)
    c.model.image_token_id = 7
    it = iter(pipeline.build(c, sources=_sources(dirs)))
    with pytest.raises(pipeline.DataError, match="image token id 4 != model.image_token_id 7"):
        next(it)


def test_worker_processes_give_batches_and_a_checkpointable_state(corpus):
    """data.workers > 0: grain worker processes each run the pipeline on their share of every source."""
    from absl import flags

    flags.FLAGS.mark_as_parsed()  # grain workers read absl flags
    root, dirs = corpus
    c = _cfg(root, workers=2, prefetch=2)
    it = iter(pipeline.build(c, sources=_sources(dirs)))
    first = [next(it) for _ in range(4)]
    state = it.get_state()
    assert all(b["ids"].shape == (4, 128) for b in first)
    stats = pipeline.iterator_stats(it)
    assert sum(s["used"] for s in stats.values()) > 0
    nxt = next(it)
    it2 = iter(pipeline.build(c, sources=_sources(dirs)))
    it2.set_state(state)
    np.testing.assert_array_equal(next(it2)["ids"], nxt["ids"])
