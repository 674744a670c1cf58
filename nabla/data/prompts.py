"""The tiny scale's prompt sets: single words that each stand for many OpenMoji emoji.

A prompt is one word; it covers every emoji whose caption (lower-cased Unicode name, see
:mod:`nabla.data.openmoji`) holds that word as a whole word. Diversity is only measurable when
one prompt stands for a whole distribution, so every word below covers at least
``MIN_COVERAGE`` emoji of the clean set, and the words mix visually distinct kinds that are
alike enough within a word to learn at 32×32 (hearts of every colour, clock faces, moon phases,
flags, ...). Few animal names survive this: Unicode names are terse (e.g. "dog" covers 5
emoji, "monkey" 5), and only "cat" (13: mostly cat faces) does; it is fine-tuned on, as the
paper fine-tunes on animal names. The validation and evaluation prompts are held out from
fine-tuning but are pretraining words, so the prior knows them; the twelve words split 5 / 3 / 4.

Coverage in the clean set (2,024 emoji; 1,823 in the train split of ``split(seed=0)``),
as ``word: clean / train``::

    flag      293 / 263   country, regional and OpenMoji flags
    heart      29 /  26   hearts of every colour, 6 couples with a heart
    clock      27 /  25   clock faces at every half hour, alarm and mantelpiece clocks
    hand       24 /  23   hand gestures
    smiling    21 /  21   smiley faces (3 are cat faces)
    circle     21 /  17   coloured discs, record / cycle buttons
    moon       15 /  12   moon phases, moons with faces
    triangle   15 /  14   play / rewind buttons, red triangles
    keycap     14 /  11   digit and symbol keycaps
    cat        13 /  13   cat faces, two whole cats
    star       13 /  12   stars, star of David, star-and-crescent, two flags
    chess      12 /  10   white and black chess pieces

All twelve together (``tiny_subset``) cover 491 emoji of the clean set (442 of the train
split). Words with more coverage were left out on purpose: "face" (182) mixes smileys, animal,
clock and moon faces and would add 123 images; "square" (60) and "arrow" (47) are largely
ZWJ extras pairing another emoji (flags, jars, people) with a square or an arrow (37 and 20);
"man" / "woman" / "person" (~55 each) are people doing many different things.
"""

from __future__ import annotations

from typing import Iterable

#: the pretraining vocabulary of prompt words (the tiny prior's training subset)
TRAIN_WORDS: tuple[str, ...] = (
    "flag",
    "heart",
    "clock",
    "hand",
    "smiling",
    "circle",
    "moon",
    "triangle",
    "keycap",
    "cat",
    "star",
    "chess",
)

#: prompts the reward fine-tuning trains on
FINETUNE_PROMPTS: tuple[str, ...] = ("cat", "heart", "flag", "clock", "hand")

#: prompts every choice (tuning, matched-reward reference) is made on: disjoint from both others
VALIDATION_PROMPTS: tuple[str, ...] = ("triangle", "keycap", "chess")

#: held-out prompts (never fine-tuned on, known to the prior) for the tables only
EVAL_PROMPTS: tuple[str, ...] = ("smiling", "moon", "star", "circle")

def prompt_splits() -> dict[str, str]:
    """Every prompt word and its split, in the order train, validation, evaluation."""
    splits = (("train", FINETUNE_PROMPTS), ("validation", VALIDATION_PROMPTS), ("evaluation", EVAL_PROMPTS))
    return {word: split for split, words in splits for word in words}


#: every prompt word covers at least this many emoji of the clean set
MIN_COVERAGE = 12


def caption_words(caption: str) -> list[str]:
    """The words of a caption: split on white space (hyphenated words stay whole)."""
    return caption.split()


def has_word(caption: str, word: str) -> bool:
    """Whether ``word`` occurs in ``caption`` as a whole word."""
    return word in caption_words(caption)


def prompt_coverage(prompts: Iterable[str], captions: Iterable[str]) -> dict[str, int]:
    """How many captions contain each prompt word (as a whole word)."""
    word_sets = [set(caption_words(c)) for c in captions]
    return {p: sum(p in words for words in word_sets) for p in prompts}
