"""A small vocabulary and sentence grammar: the text behind every corpus kind.

Everything is drawn from the caller's `np.random.Generator`, so text is deterministic from the seed
and nothing large is bundled. Plain ASCII only: it renders with every bundled font (PIL's default
font, PDF Helvetica, matplotlib's DejaVu) and survives a PDF text-layer round trip unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

NOUNS = (
    "river",
    "garden",
    "engine",
    "library",
    "village",
    "market",
    "harbor",
    "bridge",
    "forest",
    "teacher",
    "farmer",
    "painter",
    "student",
    "doctor",
    "pilot",
    "baker",
    "museum",
    "station",
    "island",
    "valley",
    "lantern",
    "window",
    "kitchen",
    "bicycle",
    "orchard",
    "letter",
    "map",
    "festival",
    "machine",
    "tower",
    "meadow",
    "workshop",
    "notebook",
    "telescope",
    "compass",
)
ADJECTIVES = (
    "quiet",
    "bright",
    "old",
    "narrow",
    "busy",
    "gentle",
    "ancient",
    "small",
    "large",
    "green",
    "careful",
    "curious",
    "distant",
    "warm",
    "cold",
    "hidden",
    "famous",
    "simple",
    "modern",
    "wooden",
    "golden",
    "patient",
    "clever",
    "empty",
    "crowded",
    "steady",
)
VERBS = (
    "visited",
    "repaired",
    "painted",
    "described",
    "crossed",
    "opened",
    "followed",
    "built",
    "measured",
    "studied",
    "found",
    "carried",
    "watched",
    "explained",
    "cleaned",
    "planned",
    "designed",
    "collected",
    "improved",
    "recorded",
)
ADVERBS = (
    "slowly",
    "quickly",
    "carefully",
    "often",
    "rarely",
    "quietly",
    "happily",
    "early",
    "again",
)
PREPOSITIONS = ("near", "behind", "beside", "across", "under", "above", "inside", "beyond")
NAMES = (
    "Ada",
    "Bruno",
    "Chen",
    "Dara",
    "Elena",
    "Farid",
    "Greta",
    "Hiro",
    "Ines",
    "Jonas",
    "Kemal",
    "Lena",
    "Mateo",
    "Nadia",
    "Omar",
    "Priya",
    "Quinn",
    "Rosa",
    "Sami",
    "Tariq",
)
TIMES = (
    "in the morning",
    "after lunch",
    "at night",
    "last winter",
    "every spring",
    "on Sunday",
    "before the storm",
    "during the festival",
)
CONNECTORS = ("However,", "Later,", "Meanwhile,", "As a result,", "In the end,", "Afterwards,")
TOPICS = (
    "History of the",
    "A Guide to the",
    "Notes on the",
    "Life in the",
    "The Story of the",
    "Visiting the",
    "Inside the",
)

_TEMPLATES = (
    "{Det} {adj} {noun} {verb} the {noun2} {prep} the {place}.",
    "{name} {verb} the {adj} {noun} {time}.",
    "{name} and {name2} {adv} {verb} {a_noun} {prep} the {place}.",
    "The {noun} was {adj}, so {name} {verb} it {adv}.",
    "{conn} the {adj} {noun} {verb} the {noun2}.",
    "{time_cap}, {name} {verb} the {noun} {prep} the {adj} {place}.",
    "Nobody {verb} the {noun} {prep} the {place} {time}.",
    "{name} said that the {noun} was {adj} and {adj2}.",
)


def pick(rng: np.random.Generator, seq: Sequence):
    """One element of `seq` (a Python object, not a numpy scalar)."""
    return seq[int(rng.integers(len(seq)))]


def sample(rng: np.random.Generator, seq: Sequence, k: int) -> list:
    """`k` distinct elements of `seq`, in random order."""
    return [seq[int(i)] for i in rng.choice(len(seq), size=k, replace=False)]


def article(noun: str) -> str:
    """ "an orchard", "a river" """
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def sentence(rng: np.random.Generator) -> str:
    t = pick(rng, _TEMPLATES)
    name, name2 = sample(rng, NAMES, 2)
    adj, adj2 = sample(rng, ADJECTIVES, 2)
    noun, noun2, place = sample(rng, NOUNS, 3)
    time = pick(rng, TIMES)
    s = t.format(
        Det=pick(rng, ("The", "A", "One", "Every")),
        adj=adj,
        adj2=adj2,
        noun=noun,
        noun2=noun2,
        place=place,
        a_noun=article(noun),
        verb=pick(rng, VERBS),
        prep=pick(rng, PREPOSITIONS),
        name=name,
        name2=name2,
        adv=pick(rng, ADVERBS),
        time=time,
        time_cap=time[0].upper() + time[1:],
        conn=pick(rng, CONNECTORS),
    )
    return s[0].upper() + s[1:]


def paragraph(rng: np.random.Generator, lo: int = 2, hi: int = 5) -> str:
    """`lo`..`hi` sentences joined by spaces."""
    return " ".join(sentence(rng) for _ in range(int(rng.integers(lo, hi + 1))))


def title(rng: np.random.Generator) -> str:
    return (
        f"{pick(rng, TOPICS)} {pick(rng, ADJECTIVES).capitalize()} {pick(rng, NOUNS).capitalize()}"
    )


def phrase(rng: np.random.Generator) -> str:
    """A short capitalised label ("Golden harbor", "Bridge"): buttons, links, list items, table cells."""
    s = f"{pick(rng, ADJECTIVES)} {pick(rng, NOUNS)}" if rng.random() < 0.6 else pick(rng, NOUNS)
    return s[0].upper() + s[1:]
