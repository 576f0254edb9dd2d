"""The embedded corpus: deterministic, valid records of every kind, answers grounded in what was drawn."""

import hashlib
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from dsvl_jax.data import corpus, records
from dsvl_jax.data.corpus import canvas, captions, charts
from dsvl_jax.data.pdf import make_pdf, render_pdf

SEED = 3


def _digest(ex: records.Example) -> str:
    return hashlib.sha256(
        repr((ex.id, ex.kind, ex.messages)).encode() + b"".join(ex.images)
    ).hexdigest()


@pytest.fixture(scope="module")
def sample():
    """4 records of every kind at 128 px."""
    return list(corpus.generate_all(4, SEED, 128))


def test_every_kind_validates_and_decodes(sample):
    assert [ex.kind for ex in sample] == [k for k in records.KINDS for _ in range(4)]
    for ex in sample:
        assert ex.id == f"{ex.kind}-{SEED}-{ex.id.rsplit('-', 1)[1]}"
        records.validate(ex)
        assert ex.is_multimodal == (ex.kind in records.MULTIMODAL_KINDS), ex.id
        for b in ex.images:
            assert b.startswith(b"\x89PNG"), ex.id
            im = records.decode_image(b, record_id=ex.id)
            assert abs(max(im.size) - 128) <= 1, (ex.id, im.size)
        text = "".join(m.content for m in ex.messages).replace(records.IMAGE_TAG, "")
        assert text.isascii() and text.strip(), ex.id


def test_deterministic_and_random_access(sample):
    again = list(corpus.generate_all(4, SEED, 128))
    assert again == sample
    other = list(corpus.generate_all(4, SEED + 1, 128))
    for kind in records.KINDS:
        mine = [ex for ex in sample if ex.kind == kind]
        theirs = [ex for ex in other if ex.kind == kind]
        assert [(e.messages, e.images) for e in mine] != [(e.messages, e.images) for e in theirs], (
            kind
        )
        # record i does not depend on the records drawn before it (nor on the figure reuse of charts)
        assert corpus.make_example(kind, SEED, 2, image_size=128) == mine[2]


def test_same_records_in_a_fresh_process():
    """No hidden state: another interpreter, with another hash seed, writes the same bytes."""
    code = (
        "import hashlib; from dsvl_jax.data import corpus; print([hashlib.sha256(repr((e.id, e.kind, e.messages))"
        ".encode() + b''.join(e.images)).hexdigest() for e in corpus.generate_all(1, 5, 64)])"
    )
    env = dict(os.environ, PYTHONHASHSEED="123")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == str([_digest(ex) for ex in corpus.generate_all(1, 5, 64)])


def test_varied_aspect_ratios(sample):
    ratios = {}
    for ex in sample:
        for b in ex.images:
            w, h = records.decode_image(b).size
            ratios.setdefault(ex.kind, set()).add(round(w / h, 2))
    assert set(ratios) == set(records.MULTIMODAL_KINDS)
    everything = set().union(*ratios.values())
    assert any(r > 1.1 for r in everything) and any(r < 0.9 for r in everything)
    for kind, rs in ratios.items():
        assert len(rs) >= 2, (kind, rs)


def _expected(spec: charts.ChartSpec, question: str) -> str:
    """The answer to `question`, worked out here from the plotted data."""
    v, lab = list(spec.values), list(spec.labels)
    if question == charts.Q_POINTS:
        return str(len(spec.xs))
    if question.startswith("Does "):
        r = np.corrcoef(spec.xs, v)[0, 1]
        return "up" if r > 0 else "down"
    if m := re.fullmatch(r"Which \w+ has the (largest|smallest) (value|share)\?", question):
        best = max(v) if m.group(1) == "largest" else min(v)
        assert v.count(best) == 1, "ambiguous extreme"
        return lab[v.index(best)]
    if m := re.fullmatch(r"What is the value for (.+)\?", question):
        return str(v[lab.index(m.group(1))])
    if m := re.fullmatch(r"What share of the total is (.+)\?", question):
        return f"{v[lab.index(m.group(1))]}%"
    if re.fullmatch(r"How many \w+s are shown\?", question):
        return str(len(lab))
    if question == charts.Q_KIND:
        return {
            "bar": "bar chart",
            "barh": "horizontal bar chart",
            "line": "line chart",
            "pie": "pie chart",
            "scatter": "scatter plot",
        }[spec.chart]
    if re.fullmatch(r"What colour are the (bars|line|points)\?", question):
        assert spec.chart != "pie"
        return spec.color.split(":")[1]
    raise AssertionError(f"unknown question {question!r}")


def test_chart_answers_match_plotted_data():
    seen = set()
    for i in range(8):  # full records: rebuild the spec from the record's own generator
        ex = corpus.make_example("chart", SEED, i, image_size=256)
        spec = charts.make_spec(corpus.example_rng("chart", SEED, i))
        assert spec.title
        msgs = ex.messages
        assert msgs[0].content.startswith(records.IMAGE_TAG + "\n")
        assert all(records.IMAGE_TAG not in m.content for m in msgs[1:])
        for q, a in zip(msgs[0::2], msgs[1::2]):
            assert a.content == _expected(spec, q.content.replace(records.IMAGE_TAG + "\n", "")), (
                ex.id,
                q,
            )
    for i in range(300):  # many specs (no rendering) to reach every chart type and question
        rng = np.random.default_rng(i)
        spec = charts.make_spec(rng)
        seen.add(spec.chart)
        if spec.chart == "pie":
            assert sum(spec.values) == 100 and min(spec.values) > 0
        for q, a in charts.questions(spec, rng):
            assert a == _expected(spec, q), (i, q)
    assert seen == set(charts.CHARTS)


def test_small_charts_ask_only_what_they_show():
    """Below LEGIBLE_PX the printed numbers and labels are unreadable: only kind / colour questions."""
    for i in range(10):
        ex = corpus.make_example("chart", SEED, i, image_size=64)
        assert len(ex.messages) == 2
        q = ex.messages[0].content.replace(records.IMAGE_TAG + "\n", "")
        assert q == charts.Q_KIND or q.startswith("What colour are the"), q
    assert any(
        len(corpus.make_example("chart", SEED, i, image_size=256).messages) == 4 for i in range(10)
    )


def test_caption_names_what_was_drawn():
    for i in range(6):
        ex = corpus.make_example("caption", SEED, i, image_size=96)
        scene = captions.make_scene(corpus.example_rng("caption", SEED, i))
        caption = ex.messages[0].content
        px = np.asarray(records.decode_image(ex.images[0])).reshape(-1, 3)
        colors = {tuple(c) for c in np.unique(px, axis=0)}
        assert (
            canvas.BACKGROUNDS[scene.background] in colors
            and f"{scene.background} background" in caption
        )
        for s in scene.shapes:
            assert f"{s.size} {s.color} {s.shape} {captions.POSITIONS[s.cell]}" in caption
            assert canvas.COLORS[s.color] in colors, (ex.id, s.color)


def test_interleaved_figures_follow_their_images():
    for ex in corpus.generate("interleaved", 6, SEED, image_size=96):
        parts = ex.messages[0].content.split("\n\n")  # title, paragraphs and figures
        figures = [i for i, p in enumerate(parts) if records.IMAGE_TAG in p]
        assert 1 <= len(ex.images) == len(figures) <= 2
        for k, i in enumerate(figures, 1):
            assert parts[i].startswith(f"{records.IMAGE_TAG}\nFigure {k}: "), ex.id
            assert i >= 2 and records.IMAGE_TAG not in parts[i - 1], ex.id  # after a paragraph


def _norm(s: str) -> str:
    return " ".join(s.split())


def test_pdf_round_trip():
    body = " ".join(f"Sentence number {i} says (something) & more." for i in range(60))
    pages = [f"# The Title\n\n{body}\n\nLast paragraph.", "A second page; short."]
    data = make_pdf(pages, page_size=(300, 400), font_size=10, margin=30)
    assert data.startswith(b"%PDF") and data == make_pdf(
        pages, page_size=(300, 400), font_size=10, margin=30
    )
    out = render_pdf(data, dpi=72)
    assert len(out) >= 3  # the long first string flowed onto a second page
    assert [p.index for p in out] == list(range(len(out)))
    assert _norm(" ".join(p.text for p in out[:-1])) == _norm(pages[0].replace("# ", ""))
    assert out[-1].text == "A second page; short."
    assert out[0].text.splitlines()[0] == "The Title"
    for p in out:
        assert records.decode_image(p.png).size == (300, 400)
    big = render_pdf(data, dpi=144, max_pages=1)
    assert len(big) == 1 and records.decode_image(big[0].png).size == (600, 800)
    assert big[0].text == out[0].text
    im = np.asarray(records.decode_image(big[0].png))
    assert im.min() < 100 and (im == 255).mean() > 0.5  # dark glyphs on a mostly white page


def test_pdf_bad_input():
    with pytest.raises(records.BadRecord) as e:
        render_pdf(b"this is not a pdf", record_id="doc-7")
    assert e.value.reason == "image_corrupt" and "not a readable PDF" in e.value.detail
    assert e.value.record_id == "doc-7"
    good = make_pdf(["hello"])
    for bad in (
        good[: len(good) // 2],
        corpus.make_example("caption", 0, 0, image_size=64).images[0],
    ):
        with pytest.raises(records.BadRecord, match="image_corrupt"):
            render_pdf(bad)
    with pytest.raises(records.BadRecord, match="image_empty"):
        render_pdf(b"")
    with pytest.raises(records.BadRecord, match="image_too_large"):
        render_pdf(good, dpi=72 * 20, max_pixels=10_000_000)
    with pytest.raises(ValueError, match="page 1 has"):
        make_pdf(["fine", "not \u4e2d fine"])


def test_bad_arguments():
    with pytest.raises(ValueError, match="kind 'video'"):
        corpus.generate("video", 1, 0)
    with pytest.raises(ValueError, match="seed"):
        corpus.generate("text", 1, -1)
    with pytest.raises(ValueError, match="image_size"):
        corpus.make_example("chart", 0, 0, image_size=16)


def test_threads_give_the_same_records():
    """grain reads with threads: the shared chart figure and PDFium are locked, so records do not mix."""
    from concurrent.futures import ThreadPoolExecutor

    jobs = [(kind, i) for i in range(3) for kind in ("chart", "pdf", "screenshot")]
    serial = [corpus.make_example(k, SEED, i, image_size=96) for k, i in jobs]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(
            pool.map(lambda job: corpus.make_example(job[0], SEED, job[1], image_size=96), jobs)
        )
    assert threaded == serial
