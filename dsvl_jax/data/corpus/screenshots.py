"""Screenshot kind: a synthetic web page drawn with Pillow; the target is its visible text.

A page has a nav bar (site name and links, or a "Menu" button on narrow pages), a title, an author
line, paragraphs, and some of: a row of buttons, a link, a table, a footer. Desktop pages are
landscape, phone pages portrait. Elements are stacked top to bottom until the page is full; an
element that does not fit is not drawn (a paragraph is cut after its last whole line).

Target (chosen over a QA conversation: it grounds every pixel of text): the visible text in reading
order, one line per visual row; items sharing a row (nav links, buttons, table cells) are joined
by " | ". Record: one "text" message, IMAGE_TAG + text.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from dsvl_jax.data import records
from dsvl_jax.data.corpus import canvas, words

_DESKTOP, _PHONE = (16 / 10, 4 / 3, 16 / 9), (9 / 16, 9 / 19.5, 2 / 3)
_NAV_LINKS = ("Home", "About", "Blog", "Shop", "News", "Help", "Docs", "Contact", "Events")
_BUTTONS = (
    "Sign up",
    "Log in",
    "Learn more",
    "Subscribe",
    "Buy now",
    "Get started",
    "Contact us",
    "Download",
)
_THEMES = (
    (31, 119, 180),
    (44, 120, 60),
    (120, 50, 140),
    (200, 80, 20),
    (40, 40, 40),
    (170, 30, 60),
)
_LINK = (20, 60, 200)
_GRAY = (110, 110, 110)
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class _Page:
    """A cursor down the canvas that records the text of every row it draws."""

    def __init__(self, w: int, h: int, fs: int):
        self.im = Image.new("RGB", (w, h), (255, 255, 255))
        self.d = ImageDraw.Draw(self.im)
        self.w, self.h, self.fs = w, h, fs
        self.pad = max(3, fs)
        self.y = 0
        self.rows: list[str] = []
        self.bottom = h  # the footer, when there is one, reserves the last rows

    def fits(self, height: float) -> bool:
        return self.y + height <= self.bottom - 2

    def text(self, xy, s: str, f, fill, bold: bool = False) -> None:
        self.d.text(xy, s, font=f, fill=fill)
        if bold:  # the bundled font has no bold face: overdraw one pixel to the right
            self.d.text((xy[0] + 1, xy[1]), s, font=f, fill=fill)


def _nav(p: _Page, rng: np.random.Generator, site: str, theme) -> None:
    f = canvas.font(p.fs)
    bar = int(p.fs * 2.2)
    p.d.rectangle([0, 0, p.w, bar], fill=theme)
    ty = (bar - canvas.line_height(f) / 1.35) / 2 - f.getbbox("Ag")[1]
    site = canvas.clip(site, f, p.w - 2 * p.pad - 1)
    p.text((p.pad, ty), site, f, (255, 255, 255), bold=True)
    x_end = p.pad + f.getlength(site) + 2 * p.pad
    links = words.sample(rng, _NAV_LINKS, int(rng.integers(2, 5)))
    gap = p.fs * 1.2

    def width(labels: list[str]) -> float:
        return sum(f.getlength(s) for s in labels) + gap * max(0, len(labels) - 1)

    # narrow page: a menu button instead of links, or nothing
    if x_end + width(links) > p.w - p.pad:
        links = ["Menu"] if x_end + width(["Menu"]) <= p.w - p.pad else []
    x = p.w - p.pad - width(links)
    for s in links:
        p.text((x, ty), s, f, (255, 255, 255))
        x += f.getlength(s) + gap
    p.rows.append(" | ".join([site, *links]))
    p.y = bar + p.pad


def _lines(p: _Page, text: str, f, fill, bold: bool = False, underline: bool = False) -> bool:
    """Wrapped text, line by line while it fits. False when the page filled up."""
    lh = canvas.line_height(f)
    for line in canvas.wrap(text, f, p.w - 2 * p.pad):
        if not p.fits(lh) or f.getlength(line) > p.w - 2 * p.pad:
            return False
        p.text((p.pad, p.y), line, f, fill, bold)
        if underline:
            base = p.y + f.getbbox("A")[3] + 1
            p.d.line([p.pad, base, p.pad + f.getlength(line), base], fill=fill)
        p.rows.append(line)
        p.y += lh
    p.y += p.pad // 2
    return True


def _buttons(p: _Page, rng: np.random.Generator, theme) -> bool:
    f = canvas.font(p.fs)
    labels = words.sample(rng, _BUTTONS, int(rng.integers(1, 3)))
    bh = int(p.fs * 2)
    widths = [f.getlength(s) + 2 * p.fs for s in labels]
    if sum(widths) + p.fs * (len(labels) - 1) > p.w - 2 * p.pad:
        labels, widths = labels[:1], widths[:1]
    if not p.fits(bh) or widths[0] > p.w - 2 * p.pad:
        return False
    x = p.pad
    for i, (s, bw) in enumerate(zip(labels, widths)):
        filled = i == 0
        p.d.rounded_rectangle(
            [x, p.y, x + bw, p.y + bh],
            radius=max(2, bh // 4),
            fill=theme if filled else (255, 255, 255),
            outline=theme,
        )
        ty = p.y + (bh - (f.getbbox("Ag")[3] - f.getbbox("Ag")[1])) / 2 - f.getbbox("Ag")[1]
        p.text((x + p.fs, ty), s, f, (255, 255, 255) if filled else theme)
        x += bw + p.fs
    p.rows.append(" | ".join(labels))
    p.y += bh + p.pad
    return True


def _table(p: _Page, rng: np.random.Generator, theme) -> bool:
    f = canvas.font(max(6, p.fs - 1))
    n_cols = int(rng.integers(2, 4))
    header = ["Name", "Count", "Price"]
    rows = [
        [
            words.pick(rng, words.NOUNS).capitalize(),
            str(int(rng.integers(1, 500))),
            f"{rng.uniform(1, 99):.2f}",
        ]
        for _ in range(int(rng.integers(2, 5)))
    ]

    def too_wide(n: int) -> bool:
        return any(
            f.getlength(c) > (p.w - 2 * p.pad) / n - 4 for r in [header, *rows] for c in r[:n]
        )

    while n_cols > 1 and too_wide(n_cols):
        n_cols -= 1  # narrow page: drop columns until the cells fit
    header, rows = header[:n_cols], [r[:n_cols] for r in rows]
    rh = int(canvas.line_height(f) * 1.3)
    cw = (p.w - 2 * p.pad) / n_cols
    if not p.fits(rh * (len(rows) + 1)):
        return False
    dy = (rh - (f.getbbox("Ag")[3] - f.getbbox("Ag")[1])) / 2 - f.getbbox("Ag")[1]
    for i, r in enumerate([header, *rows]):
        top = p.y + i * rh
        if i == 0:
            p.d.rectangle([p.pad, top, p.w - p.pad, top + rh], fill=(235, 235, 235))
        for j, c in enumerate(r):
            p.text((p.pad + j * cw + 3, top + dy), c, f, (0, 0, 0), bold=i == 0)
        p.d.line([p.pad, top + rh, p.w - p.pad, top + rh], fill=(180, 180, 180))
        p.rows.append(" | ".join(r))
    p.y += rh * (len(rows) + 1) + p.pad
    return True


def _footer(p: _Page, text: str) -> str:
    """Draw the footer bar; returns the text as drawn (clipped on narrow pages)."""
    f = canvas.font(max(6, p.fs - 1))
    text = canvas.clip(text, f, p.w - 2 * p.pad)
    fh = int(canvas.line_height(f) * 1.6)
    p.d.rectangle([0, p.h - fh, p.w, p.h], fill=(240, 240, 240))
    p.d.text(
        (p.pad, p.h - fh + (fh - canvas.line_height(f) / 1.35) / 2 - f.getbbox("Ag")[1]),
        text,
        font=f,
        fill=_GRAY,
    )
    p.bottom = p.h - fh
    return text


def render(rng: np.random.Generator, image_size: int) -> tuple[Image.Image, str]:
    """(image, visible text in reading order)."""
    w, h = canvas.canvas_size(rng, image_size, words.pick(rng, (_DESKTOP, _PHONE)))
    p = _Page(w, h, fs=max(7, round(image_size / rng.uniform(26, 34))))
    theme = words.pick(rng, _THEMES)
    site = f"{words.pick(rng, words.ADJECTIVES).capitalize()}{words.pick(rng, words.NOUNS).capitalize()}"
    footer = f"Copyright {int(rng.integers(2005, 2025))} {site}" if rng.random() < 0.6 else ""
    if footer:
        footer = _footer(p, footer)
    _nav(p, rng, site, theme)
    ok = _lines(p, words.title(rng), canvas.font(round(p.fs * 1.6)), (0, 0, 0), bold=True)
    if ok and rng.random() < 0.6:
        meta = (
            f"By {words.pick(rng, words.NAMES)} - {int(rng.integers(1, 29))} {words.pick(rng, _MONTHS)} "
            f"{int(rng.integers(2005, 2025))}"
        )
        ok = _lines(p, meta, canvas.font(max(6, p.fs - 1)), _GRAY)
    body = canvas.font(p.fs)
    while ok:
        block = words.pick(rng, ("paragraph", "paragraph", "buttons", "link", "table"))
        if block == "paragraph":
            ok = _lines(p, words.paragraph(rng, 1, 3), body, (30, 30, 30))
        elif block == "link":
            ok = _lines(
                p,
                f"Read more about the {words.pick(rng, words.NOUNS)}",
                body,
                _LINK,
                underline=True,
            )
        elif block == "buttons":
            ok = _buttons(p, rng, theme)
        else:
            ok = _table(p, rng, theme)
    if footer:
        p.rows.append(footer)
    return p.im, "\n".join(p.rows)


def example(rng: np.random.Generator, record_id: str, image_size: int) -> records.Example:
    im, text = render(rng, image_size)
    return records.Example(
        record_id,
        "screenshot",
        (records.Message("text", f"{records.IMAGE_TAG}{text}"),),
        (canvas.png(im),),
    )
