"""PDF kind: a multi-paragraph document written with `make_pdf`, one page rasterised by `render_pdf`.

Page formats vary (A4, Letter, A5 landscape, 16:9 slide, square), so do font size and margins. The
text flows over one or two pages; one rendered page is kept and its target is that page's text
layer as PDFium extracts it (layout lines joined by "\n", headings without their "# " marker).
Record: one "text" message, IMAGE_TAG + text layer (as the PDF importer writes it).
"""

from __future__ import annotations

import numpy as np

from dsvl_jax.data import records
from dsvl_jax.data.corpus import words
from dsvl_jax.data.pdf import A4, LETTER, make_pdf, render_pdf

PAGE_FORMATS = (A4, LETTER, (595.0, 420.0), (720.0, 405.0), (500.0, 500.0))


def document(rng: np.random.Generator) -> str:
    """ "# title", then paragraphs, sometimes with a sub-heading: the `make_pdf` input."""
    parts = [f"# {words.title(rng)}"]
    for i in range(int(rng.integers(2, 6))):
        if i and rng.random() < 0.25:
            parts.append(f"# {words.phrase(rng)}")
        parts.append(words.paragraph(rng, 2, 5))
    return "\n\n".join(parts)


def example(rng: np.random.Generator, record_id: str, image_size: int) -> records.Example:
    page_size = words.pick(rng, PAGE_FORMATS)
    lines_per_page = rng.uniform(22, 40)
    font_size = max(page_size) / lines_per_page / 1.35
    data = make_pdf(
        [document(rng)],
        page_size=page_size,
        font_size=font_size,
        margin=min(page_size) * rng.uniform(0.06, 0.1),
    )
    pages = render_pdf(data, dpi=image_size * 72 / max(page_size), max_pages=2, record_id=record_id)
    page = pages[int(rng.integers(len(pages)))]
    return records.Example(
        record_id, "pdf", (records.Message("text", f"{records.IMAGE_TAG}{page.text}"),), (page.png,)
    )
