"""Chart kind: matplotlib bar / line / pie / scatter charts of random data, and questions about them.

`make_spec` draws the data first from the example's generator, so a test can rebuild the exact
`ChartSpec` from the seed and check every answer against the plotted numbers. Values are printed on
the chart (bar and point labels, pie percentages), so each answer can be read off the image.
Record: an SFT conversation of 1-2 user/assistant turns; the first user turn is
IMAGE_TAG + "\n" + question, a visual one (chart kind or mark colour); a second may need the data.
Rendering uses a reused Agg `Figure` (no pyplot, no global backend).
"""

from __future__ import annotations

import dataclasses
import threading

import numpy as np

from dsvl_jax.data import records
from dsvl_jax.data.corpus import canvas
from dsvl_jax.data.corpus.words import pick, sample

CHARTS = ("bar", "barh", "line", "pie", "scatter")

# (title, item noun, category labels, value axis label)
_CATEGORY_THEMES = (
    (
        "Fruit sold at the market",
        "fruit",
        ("Apples", "Pears", "Plums", "Kiwis", "Figs", "Cherries", "Mangoes", "Lemons"),
        "Boxes sold",
    ),
    (
        "Library loans by genre",
        "genre",
        ("Poetry", "History", "Science", "Travel", "Cooking", "Mystery", "Drama"),
        "Books",
    ),
    (
        "Votes per team",
        "team",
        ("Red", "Blue", "Green", "Gold", "Silver", "Orange", "Violet"),
        "Votes",
    ),
    (
        "Visitors by town",
        "town",
        ("Ashford", "Brookton", "Calder", "Dunmore", "Elmstead", "Fairview", "Glenrock"),
        "Visitors",
    ),
)
# (title, item noun, ordered x labels, value axis label)
_SERIES_THEMES = (
    (
        "Rainfall by month",
        "month",
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"),
        "Rainfall (mm)",
    ),
    ("Revenue by year", "year", tuple(str(y) for y in range(2010, 2024)), "Revenue"),
    ("Members by year", "year", tuple(str(y) for y in range(2005, 2020)), "Members"),
)
_SCATTER_THEMES = (
    ("Height and weight", "Height", "Weight"),
    ("Study time and score", "Hours", "Score"),
    ("Price and sales", "Price", "Sales"),
    ("Age and speed", "Age", "Speed"),
)
_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:gray")

# question templates (the tests parse these)
Q_MAX = "Which {item} has the largest value?"
Q_MIN = "Which {item} has the smallest value?"
Q_VALUE = "What is the value for {label}?"
Q_COUNT = "How many {item}s are shown?"
Q_SHARE_MAX = "Which {item} has the largest share?"
Q_SHARE = "What share of the total is {label}?"
Q_POINTS = "How many points are plotted?"
Q_TREND = "Does {y} go up or down as {x} grows?"
# visual questions a low-resolution model can answer (colour and chart kind survive a 32 px view)
Q_COLOR = "What colour are the {marks}?"
Q_KIND = "What kind of chart is this?"
KIND_NAMES = {
    "bar": "bar chart",
    "barh": "horizontal bar chart",
    "line": "line chart",
    "pie": "pie chart",
    "scatter": "scatter plot",
}
MARKS = {"bar": "bars", "barh": "bars", "line": "line", "scatter": "points"}


@dataclasses.dataclass(frozen=True)
class ChartSpec:
    chart: str  # one of CHARTS
    title: str
    item: str  # what a category is called in questions ("fruit", "year")
    labels: tuple[str, ...]  # categories / x ticks (empty for scatter)
    # bar heights, line points, pie percentages (sum 100): ints; scatter y
    values: tuple[float, ...]
    xs: tuple[float, ...] = ()  # scatter x
    xlabel: str = ""
    ylabel: str = ""
    color: str = "tab:blue"


def make_spec(rng: np.random.Generator) -> ChartSpec:
    """Random chart data. Category values are distinct integers, so largest/smallest are unambiguous."""
    chart = pick(rng, CHARTS)
    color = pick(rng, _COLORS)
    if chart == "scatter":
        title, xl, yl = pick(rng, _SCATTER_THEMES)
        n = int(rng.integers(5, 16))
        xs = np.round(rng.uniform(0, 10, n), 1)
        slope = float(rng.choice([-1, 1]) * rng.uniform(1, 3))
        ys = np.round(slope * xs + rng.normal(0, 1.5, n) + 40, 1)
        return ChartSpec(
            chart,
            title,
            "point",
            (),
            tuple(float(v) for v in ys),
            tuple(float(v) for v in xs),
            xl,
            yl,
            color,
        )
    if chart == "line":
        title, item, pool, yl = pick(rng, _SERIES_THEMES)
        n = int(rng.integers(4, 9))
        start = int(rng.integers(0, len(pool) - n + 1))
        labels = pool[start : start + n]
        values = rng.choice(np.arange(5, 100), n, replace=False)
        return ChartSpec(
            chart,
            title,
            item,
            tuple(labels),
            tuple(int(v) for v in values),
            (),
            item.capitalize(),
            yl,
            color,
        )
    title, item, pool, yl = pick(rng, _CATEGORY_THEMES)
    n = int(rng.integers(3, 7 if chart != "pie" else 6))
    labels = tuple(sample(rng, pool, n))
    if chart == "pie":
        return ChartSpec(chart, title, item, labels, _percentages(rng, n), (), "", "", color)
    values = rng.choice(np.arange(1, 100), n, replace=False)
    return ChartSpec(
        chart, title, item, labels, tuple(int(v) for v in values), (), item.capitalize(), yl, color
    )


def _percentages(rng: np.random.Generator, n: int) -> tuple[int, ...]:
    """`n` distinct integers >= 4 summing to 100 (no slice too thin to label)."""
    while True:
        w = rng.uniform(0.3, 1.0, n)
        parts = np.round(w / w.sum() * 100).astype(int)
        parts[int(np.argmax(parts))] += 100 - int(parts.sum())
        if len(set(parts.tolist())) == n and parts.min() >= 4:
            return tuple(int(p) for p in parts)


LEGIBLE_PX = 160  # below this long side the printed values and labels are a few blurred pixels


def questions(
    spec: ChartSpec, rng: np.random.Generator, legible: bool = True
) -> list[tuple[str, str]]:
    """1-2 (question, answer) pairs, answers computed from `spec`. Only questions the image can answer:
    with `legible=False` (a small rendering) nothing that needs the printed numbers or labels."""
    v, lab = spec.values, spec.labels
    if spec.chart == "scatter":
        slope = np.polyfit(np.asarray(spec.xs), np.asarray(v), 1)[0]
        pool = [
            (Q_POINTS, str(len(v))),
            (
                Q_TREND.format(y=spec.ylabel.lower(), x=spec.xlabel.lower()),
                "up" if slope > 0 else "down",
            ),
        ]
    elif spec.chart == "pie":
        k = int(rng.integers(len(v)))
        pool = [
            (Q_SHARE_MAX.format(item=spec.item), lab[int(np.argmax(v))]),
            (Q_SHARE.format(label=lab[k]), f"{v[k]}%"),
        ]
    else:
        k = int(rng.integers(len(v)))
        pool = [
            (Q_MAX.format(item=spec.item), lab[int(np.argmax(v))]),
            (Q_MIN.format(item=spec.item), lab[int(np.argmin(v))]),
            (Q_VALUE.format(label=lab[k]), str(v[k])),
            (Q_COUNT.format(item=spec.item), str(len(v))),
        ]
    visual = [(Q_KIND, KIND_NAMES[spec.chart])]
    if spec.chart in MARKS:  # pies use the default colour cycle
        visual.append((Q_COLOR.format(marks=MARKS[spec.chart]), spec.color.removeprefix("tab:")))
    # every record opens with a question about what the chart looks like (readable at any resolution),
    # half of them go on with one that needs its numbers or labels read (asked second, so it cannot give
    # the first answer away)
    out = [visual[int(rng.integers(len(visual)))]]
    extra = [pool[int(rng.integers(len(pool)))]] if rng.random() < 0.5 else []
    return out + (extra if legible else [])


_FIG = None
# the shared figure and matplotlib's rcParams are not thread-safe (grain reads with threads)
_LOCK = threading.Lock()


def _figure():
    """One Agg figure reused for every chart (creating a Figure costs more than drawing a small chart)."""
    global _FIG
    if _FIG is None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        _FIG = Figure()
        FigureCanvasAgg(_FIG)
    return _FIG


def render(spec: ChartSpec, size: tuple[int, int]) -> bytes:
    """PNG of the chart at `size` = (width, height) px (4 inches on the long side, dpi scaled to fit)."""
    import matplotlib
    from PIL import Image

    w, h = size
    dpi = max(w, h) / 4
    rc = {"font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "font.family": "DejaVu Sans"}
    with _LOCK, matplotlib.rc_context(rc):
        fig = _figure()
        fig.clf()
        fig.set_dpi(dpi)
        fig.set_size_inches(w / dpi, h / dpi)
        ax = fig.add_subplot()
        _plot(ax, spec)
        ax.set_title(spec.title)
        # fixed margins in inches: tight_layout would cost a second layout pass (~40% of the time)
        left, bottom = _margins(spec)
        fig.subplots_adjust(
            left=left * dpi / w,
            right=1 - 0.15 * dpi / w,
            bottom=bottom * dpi / h,
            top=1 - 0.3 * dpi / h,
        )
        fig.canvas.draw()
        rgb = np.asarray(fig.canvas.buffer_rgba())[
            ..., :3
        ].copy()  # copy before the lock frees the figure
    return canvas.png(Image.fromarray(rgb))


def _margins(spec: ChartSpec) -> tuple[float, float]:
    """(left, bottom) margins in inches: room for tick labels, axis labels, rotated ticks."""
    if spec.chart == "pie":
        return 0.15, 0.1
    if spec.chart == "barh":
        return 0.3 + 0.065 * max(len(s) for s in spec.labels), 0.4
    rotated = spec.chart in ("bar", "line") and len(spec.values) > (4 if spec.chart == "bar" else 5)
    return 0.55, 0.6 if rotated else 0.42


def _plot(ax, spec: ChartSpec) -> None:
    v = list(spec.values)
    if spec.chart in ("bar", "barh"):
        bars = (ax.bar if spec.chart == "bar" else ax.barh)(spec.labels, v, color=spec.color)
        ax.bar_label(bars, fmt="%d", padding=1, fontsize=7)
        if spec.chart == "bar":
            ax.set_ylim(0, max(v) * 1.15)
            ax.tick_params(axis="x", labelrotation=30 if len(v) > 4 else 0)
            ax.set_ylabel(spec.ylabel)
        else:
            ax.set_xlim(0, max(v) * 1.18)
            ax.set_xlabel(spec.ylabel)
    elif spec.chart == "line":
        x = np.arange(len(v))
        ax.plot(x, v, marker="o", color=spec.color)
        for xi, yi in zip(x, v):
            ax.annotate(
                str(yi),
                (xi, yi),
                textcoords="offset points",
                xytext=(0, 4),
                ha="center",
                fontsize=7,
            )
        ax.set_xticks(x, spec.labels, rotation=30 if len(v) > 5 else 0)
        ax.set_ylim(0, max(v) * 1.2)
        ax.set_xlabel(spec.xlabel)
        ax.set_ylabel(spec.ylabel)
    elif spec.chart == "pie":
        # small radius: room for the labels
        ax.pie(
            v,
            labels=[f"{lab} ({p}%)" for lab, p in zip(spec.labels, v)],
            startangle=90,
            counterclock=False,
            radius=0.62,
            textprops={"fontsize": 7},
        )
        ax.set_aspect("equal")
    else:
        ax.scatter(spec.xs, v, color=spec.color, s=14)
        ax.set_xlabel(spec.xlabel)
        ax.set_ylabel(spec.ylabel)


def example(rng: np.random.Generator, record_id: str, image_size: int) -> records.Example:
    spec = make_spec(rng)
    # pies need width for their outside labels; the rest also come in portrait
    aspects = (
        (1.0, 4 / 3, 3 / 2, 16 / 9, 2.0)
        if spec.chart == "pie"
        else (1.0, 4 / 3, 3 / 2, 16 / 9, 3 / 4, 2.0)
    )
    size = canvas.canvas_size(rng, image_size, aspects=aspects)
    qa = questions(spec, rng, legible=max(size) >= LEGIBLE_PX)
    msgs = []
    for i, (q, a) in enumerate(qa):
        msgs += [
            records.Message("user", f"{records.IMAGE_TAG}\n{q}" if i == 0 else q),
            records.Message("assistant", a),
        ]
    return records.Example(record_id, "chart", tuple(msgs), (render(spec, size),))
