"""PDF pages as training images: rasterise each page and keep its text layer as the target.

`render_pdf` is how a PDF source becomes records (one page -> one PNG + the page's text);
`make_pdf` writes small real PDFs with a text layer, for the embedded corpus and for tests.
Both use pypdfium2 (PDFium), so what `make_pdf` writes is exactly what `render_pdf` reads back.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import hashlib
import io
import re
import threading
from collections.abc import Sequence

from dsvl_jax.data.records import DEFAULT_MAX_PIXELS, BadRecord

A4 = (595.0, 842.0)  # points (1/72 inch)
LETTER = (612.0, 792.0)
# PDFium is not thread-safe, and grain reads with threads: every PDFium call in this module holds this
# lock (other code calling pypdfium2 concurrently in the same process would still race).
_LOCK = threading.RLock()


@dataclasses.dataclass(frozen=True)
class PdfPage:
    index: int  # 0-based page number in the document
    png: bytes  # the page rasterised at the requested dpi, RGB PNG
    text: str  # the page's text layer, lines joined by "\n" ("" for a scanned page)


def render_pdf(
    data: bytes,
    *,
    dpi: float = 96,
    max_pages: int | None = None,
    record_id: str = "",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> list[PdfPage]:
    """Rasterise the first `max_pages` pages of a PDF (all by default) and extract their text layers.

    A page of W x H points becomes round(W * dpi / 72) x round(H * dpi / 72) pixels. Bytes that are not a
    readable PDF (corrupt, truncated, encrypted) raise `BadRecord("image_corrupt")`, empty bytes
    `BadRecord("image_empty")`, a page over `max_pixels` at this dpi `BadRecord("image_too_large")`.
    """
    import pypdfium2 as pdfium

    if dpi <= 0:
        raise ValueError(f"render_pdf: dpi must be > 0, got {dpi}")
    if not data:
        raise BadRecord("image_empty", "0 bytes (expected a PDF)", record_id)
    with _LOCK:
        try:
            doc = pdfium.PdfDocument(bytes(data))
        except pdfium.PdfiumError as e:
            raise BadRecord("image_corrupt", f"not a readable PDF: {e}", record_id) from None
        rendered = _render(doc, dpi, max_pages, record_id, max_pixels)
    out = []
    for i, (im, text) in enumerate(rendered):  # PNG encoding needs no lock
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        out.append(PdfPage(i, buf.getvalue(), text))
    return out


def _render(doc, dpi: float, max_pages: int | None, record_id: str, max_pixels: int) -> list:
    """[(PIL image, text)] per page; closes `doc`."""
    import pypdfium2 as pdfium

    scale = dpi / 72
    out = []
    try:
        n = len(doc) if max_pages is None else min(len(doc), max_pages)
        for i in range(n):
            page = doc[i]
            try:
                w, h = page.get_size()
                if w * scale * h * scale > max_pixels:
                    raise BadRecord(
                        "image_too_large",
                        f"page {i} is {w:.0f}x{h:.0f} pt = "
                        f"{w * scale:.0f}x{h * scale:.0f} px at {dpi} dpi > limit {max_pixels}",
                        record_id,
                    )
                im = page.render(scale=scale).to_pil().convert("RGB")
                textpage = page.get_textpage()
                try:
                    text = _clean(textpage.get_text_bounded())
                finally:
                    textpage.close()
            except pdfium.PdfiumError as e:
                raise BadRecord(
                    "image_corrupt", f"PDF page {i} cannot be rendered: {e}", record_id
                ) from None
            finally:
                page.close()
            out.append((im, text))
    finally:
        doc.close()
    return out


def _clean(text: str) -> str:
    """PDFium's text: CRLF line ends, trailing blanks and NULs -> plain "\n"-joined lines."""
    lines = text.replace("\x00", "").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join(ln.rstrip() for ln in lines).strip()


def make_pdf(
    pages: Sequence[str],
    *,
    page_size: tuple[float, float] = A4,
    font_size: float = 11.0,
    margin: float = 54.0,
    leading: float = 1.35,
) -> bytes:
    """A real PDF with a text layer: each string starts a new page and flows onto more pages if long.

    Paragraphs are separated by blank lines and word-wrapped to the text width; a paragraph starting
    with "# " is a heading (bold, 1.4x size, the "# " is not written). Text is set in the standard
    Helvetica fonts (WinAnsi encoding), so every character must be encodable as cp1252.
    `page_size` and `margin` are in points. The bytes are deterministic (fixed date and document id).
    """
    w, h = page_size
    if w <= 2 * margin or h <= 2 * margin + 2 * font_size:
        raise ValueError(f"make_pdf: page_size {page_size} leaves no room inside margin={margin}")
    for p, text in enumerate(pages):
        try:
            text.encode("cp1252")
        except UnicodeEncodeError as e:
            raise ValueError(
                f"make_pdf: page {p} has {text[e.start]!r}, which Helvetica/WinAnsi "
                f"cannot encode (only cp1252 text is supported)"
            ) from None
    with _LOCK:
        data = _write(pages, page_size, font_size, margin, leading)
    return _deterministic(data)


def _write(
    pages: Sequence[str],
    page_size: tuple[float, float],
    font_size: float,
    margin: float,
    leading: float,
) -> bytes:
    import pypdfium2 as pdfium
    import pypdfium2.raw as raw

    w, h = page_size
    doc = pdfium.PdfDocument.new()
    try:
        fonts = {
            bold: raw.FPDFText_LoadStandardFont(
                doc.raw, b"Helvetica-Bold" if bold else b"Helvetica"
            )
            for bold in (False, True)
        }
        widths: dict[tuple[bool, str], float] = {}

        def width(s: str, bold: bool, size: float) -> float:  # advance width in points, no kerning
            total = 0.0
            for ch in s:
                if (bold, ch) not in widths:
                    v = ctypes.c_float()
                    raw.FPDFFont_GetGlyphWidth(fonts[bold], ord(ch), 1000.0, ctypes.byref(v))
                    widths[bold, ch] = v.value
                total += widths[bold, ch]
            return total * size / 1000.0

        for text in pages or [""]:
            page, y = doc.new_page(w, h), h - margin
            for para in re.split(r"\n\s*\n", text.strip()):
                bold = para.startswith("# ")
                size = font_size * (1.4 if bold else 1.0)
                measure = functools.partial(width, bold=bold, size=size)
                for line in _wrap(para[2:] if bold else para, measure, w - 2 * margin):
                    if y - size < margin:  # flow onto a new page
                        _finish(page)
                        page, y = doc.new_page(w, h), h - margin
                    y -= size
                    obj = raw.FPDFPageObj_CreateTextObj(doc.raw, fonts[bold], size)
                    buf = ctypes.create_string_buffer((line + "\x00").encode("utf-16-le"))
                    raw.FPDFText_SetText(obj, ctypes.cast(buf, ctypes.POINTER(ctypes.c_ushort)))
                    raw.FPDFPageObj_Transform(obj, 1, 0, 0, 1, margin, y)
                    raw.FPDFPage_InsertObject(page.raw, obj)
                    y -= size * (leading - 1)
                y -= font_size * 0.6  # paragraph gap
            _finish(page)
        buf = io.BytesIO()
        doc.save(buf)
    finally:
        doc.close()
    return buf.getvalue()


def _wrap(text: str, width, max_width: float) -> list[str]:
    """Greedy word wrap by measured width; a word wider than a line is split by characters."""
    lines, cur = [], ""
    for word in text.split():
        while width(word) > max_width:  # hard-split an over-long word
            k = 1
            while k < len(word) and width(word[: k + 1]) <= max_width:
                k += 1
            if cur:
                lines.append(cur)
                cur = ""
            lines.append(word[:k])
            word = word[k:]
        cand = f"{cur} {word}" if cur else word
        if cur and width(cand) > max_width:
            lines.append(cur)
            cur = word
        else:
            cur = cand
    if cur:
        lines.append(cur)
    return lines


def _finish(page) -> None:
    import pypdfium2.raw as raw

    if not raw.FPDFPage_GenerateContent(page.raw):
        raise RuntimeError("make_pdf: PDFium could not write the page content stream")
    page.close()


def _deterministic(data: bytes) -> bytes:
    """PDFium stamps the current time and a random /ID: overwrite both in place (same lengths, so the
    xref offsets stay valid) with a fixed date and a content hash."""
    data = re.sub(rb"/CreationDate\(D:\d{14}", b"/CreationDate(D:20000101000000", data)
    m = re.search(rb"/ID\s*\[\s*<([0-9A-Fa-f]+)>\s*<([0-9A-Fa-f]+)>", data)
    if m:
        blank = data[: m.start()] + data[m.end() :]
        digest = hashlib.sha256(blank).hexdigest().upper().encode()
        a, b = m.group(1), m.group(2)
        data = (
            data[: m.start(1)]
            + digest[: len(a)]
            + data[m.end(1) : m.start(2)]
            + digest[: len(b)]
            + data[m.end(2) :]
        )
    return data
