"""The OpenMoji data set: rendering, the clean filter, the .npz cache, splits and prompts.

The whole font is rendered once per module (a few seconds) through the cache.
"""

from __future__ import annotations

import unicodedata

import numpy as np
import pytest

from nabla.data import openmoji
from nabla.data.openmoji import (
    OpenMojiSet,
    caption,
    clean,
    code_points,
    load_openmoji,
    openmoji_version,
    render_openmoji,
    split,
    tiny_subset,
    word_dropout,
)
from nabla.data.prompts import (
    EVAL_PROMPTS,
    FINETUNE_PROMPTS,
    MIN_COVERAGE,
    TRAIN_WORDS,
    has_word,
    prompt_coverage,
)

CAT_FACE = "1F431"


@pytest.fixture(scope="module")
def cache_file(tmp_path_factory):
    return tmp_path_factory.mktemp("openmoji") / "openmoji.npz"


@pytest.fixture(scope="module")
def full(cache_file) -> OpenMojiSet:
    """Every emoji the font draws (rendered once, written to the cache)."""
    return load_openmoji(cache_file, clean_only=False)


@pytest.fixture(scope="module")
def clean_set(full) -> OpenMojiSet:
    return clean(full)


def test_shapes_and_order(full, clean_set):
    for ds in (full, clean_set):
        assert ds.images.dtype == np.uint8
        assert ds.images.shape == (len(ds), 32, 32, 3)
        assert len(ds.codes) == len(ds.captions) == len(ds)
        assert len(set(ds.codes)) == len(ds)
        assert ds.codes == sorted(ds.codes, key=code_points)
    assert 1500 < len(clean_set) < len(full)
    unicode = tuple(int(x) for x in unicodedata.unidata_version.split("."))
    if openmoji_version() == "17.0.0" and unicode >= (14, 0):  # Python 3.10 knows fewer names
        assert len(clean_set) == 2024


def test_render_is_deterministic(full):
    # a spread of singles, ZWJ sequences, flags and keycaps, rendered on their own twice
    codes = full.codes[::150] + ["1F468-200D-1F373", "1F1FA-1F1F8", "0023-FE0F-20E3"]
    first = render_openmoji(codes=codes)
    second = render_openmoji(codes=codes)
    assert first.codes == sorted(set(codes), key=code_points)
    np.testing.assert_array_equal(first.images, second.images)
    # the same pixels as in the full render
    np.testing.assert_array_equal(first.images, full.take(full.index(c) for c in first.codes).images)


def test_cache_round_trip(full, cache_file):
    assert [p.name for p in cache_file.parent.iterdir()] == [cache_file.name]  # one file, no temp
    stamp = cache_file.stat().st_mtime_ns
    again = load_openmoji(cache_file, clean_only=False)
    assert cache_file.stat().st_mtime_ns == stamp  # read, not re-rendered
    np.testing.assert_array_equal(again.images, full.images)
    assert again.codes == full.codes and again.captions == full.captions
    assert load_openmoji(cache_file).codes == clean(full).codes


def test_broken_or_stale_cache_is_rendered_again(tmp_path, monkeypatch):
    fake = OpenMojiSet(np.full((1, 32, 32, 3), 7, np.uint8), [CAT_FACE], ["cat face"])
    calls = []
    monkeypatch.setattr(openmoji, "render_openmoji", lambda size, ss: calls.append(size) or fake)
    path = tmp_path / "cache.npz"
    path.write_bytes(b"not a zip file")
    assert load_openmoji(path, clean_only=False).codes == [CAT_FACE]
    assert load_openmoji(path, clean_only=False).codes == [CAT_FACE]
    assert calls == [32]  # rendered for the broken file, read the second time
    load_openmoji(path, size=16, clean_only=False)  # other settings: render again
    assert calls == [32, 16]


def test_clean_filter(full, clean_set):
    assert all(clean_set.captions)
    for code in clean_set.codes:
        cps = code_points(code)
        assert not any(0x1F3FB <= cp <= 0x1F3FF for cp in cps), code  # skin tones
        assert not any(0xE0020 <= cp <= 0xE007F for cp in cps), code  # subdivision flags
        assert not any(0xE000 <= cp <= 0xF8FF for cp in cps), code  # Private Use Area extras
    # what was dropped is really there in the full render
    assert "1F44D-1F3FB" in full.codes and "1F44D-1F3FB" not in clean_set.codes
    assert "1F3F4-E0067-E0062-E0065-E006E-E0067-E007F" in full.codes
    assert "E000" in full.codes and "E000" not in clean_set.codes


def test_real_renders(clean_set):
    assert clean_set.images.mean() < 245  # not all white
    ink = (clean_set.images.min(axis=-1) < 250).sum(axis=(1, 2))
    assert ink.min() >= 8  # no blank image left
    corners = clean_set.images[:, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners >= 250).mean() > 0.95  # white background, glyphs inside the frame


def test_known_emoji(clean_set):
    i = clean_set.index(CAT_FACE)
    assert clean_set.captions[i] == "cat face"
    cat = clean_set.images[i].astype(int)
    orange = (cat[..., 0] > 200) & (cat[..., 1] > 120) & (cat[..., 1] < 200) & (cat[..., 2] < 120)
    assert orange.sum() > 50  # OpenMoji's cat is orange, so colour layers were drawn
    assert caption("1F468-200D-1F373") == "man cooking"
    assert caption("1F1FA-1F1F8") == "flag us"
    assert caption("0023-FE0F-20E3") == "keycap number sign"
    assert caption("E000") == ""


def test_split(clean_set):
    train, heldout = split(clean_set)
    train2, heldout2 = split(clean_set)
    assert train.codes == train2.codes and heldout.codes == heldout2.codes
    assert not set(train.codes) & set(heldout.codes)
    assert sorted(train.codes + heldout.codes, key=code_points) == clean_set.codes
    assert 0.07 < len(heldout) / len(clean_set) < 0.13
    assert split(clean_set, seed=1)[1].codes != heldout.codes
    # an emoji's side does not depend on what else is in the set
    _, small_heldout = split(clean_set.take(range(0, len(clean_set), 3)))
    assert set(small_heldout.codes) <= set(heldout.codes)


def test_word_dropout_keeps_words_in_order():
    rng = np.random.default_rng(0)
    captions = ["cat face", "smiling cat face with heart-shaped eyes", "flag us", "pouting face", "x"]
    for cap in captions:
        words = cap.split()
        for _ in range(200):
            out = word_dropout(cap, rng).split()
            assert out
            it = iter(words)
            assert all(w in it for w in out), (cap, out)  # a subsequence of the caption
    with pytest.raises(ValueError):
        word_dropout("", rng)


def test_word_dropout_trains_short_prompts():
    rng = np.random.default_rng(1)
    outs = [word_dropout("weary cat face", rng) for _ in range(2000)]
    assert outs.count("cat") / len(outs) > 0.4  # 0.3 alone + the random subsets that are "cat"
    assert len(set(outs)) == 7  # every non-empty subset still occurs


def test_prompt_sets(clean_set):
    assert set(FINETUNE_PROMPTS) <= set(TRAIN_WORDS)
    assert set(EVAL_PROMPTS) <= set(TRAIN_WORDS)
    assert not set(EVAL_PROMPTS) & set(FINETUNE_PROMPTS)
    coverage = prompt_coverage(TRAIN_WORDS, clean_set.captions)
    assert min(coverage.values()) >= MIN_COVERAGE, coverage
    subset = tiny_subset(clean_set, TRAIN_WORDS)
    assert 400 <= len(subset) <= 1000
    assert all(any(has_word(c, w) for w in TRAIN_WORDS) for c in subset.captions)
    # whole words only: "heart" is not "heart-shaped"
    assert not has_word("smiling face with heart-shaped eyes", "heart")
