"""Text kind: text-only documents from the word grammar (article, bulleted list or numbered steps).

Keeps the language-only path (no images, no image tokens) in every mixture. Record: one "text"
message with a title line and the body, blocks separated by blank lines.
"""

from __future__ import annotations

import numpy as np

from dsvl_jax.data import records
from dsvl_jax.data.corpus import words


def document(rng: np.random.Generator) -> str:
    form = words.pick(rng, ("article", "article", "list", "steps"))
    parts = [words.title(rng)]
    if form == "article":
        parts += [words.paragraph(rng) for _ in range(int(rng.integers(2, 5)))]
    elif form == "list":
        parts.append(words.sentence(rng))
        parts.append("\n".join(f"- {words.phrase(rng)}" for _ in range(int(rng.integers(3, 7)))))
        parts.append(words.paragraph(rng, 1, 3))
    else:
        parts.append(words.sentence(rng))
        parts.append(
            "\n".join(f"{i + 1}. {words.sentence(rng)}" for i in range(int(rng.integers(3, 6))))
        )
    return "\n\n".join(parts)


def example(rng: np.random.Generator, record_id: str, image_size: int) -> records.Example:
    del image_size  # no images
    return records.Example(record_id, "text", (records.Message("text", document(rng)),))
