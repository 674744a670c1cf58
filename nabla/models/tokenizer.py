"""A CLIP BPE tokenizer whose vocabulary is the words of a caption set.

The tiny prior needs a real `CLIPTokenizer` (so it loads like SD 1.5's) but SD's 49k-token
vocabulary would dwarf a 64-wide text encoder. We write vocab.json + merges.txt in CLIP's format,
learning the merges by byte-pair encoding over the caption words until every word is one token.
BPE encoding replays the merges in rank order, so each known word encodes to its single token
("cat</w>"), every merge yields an in-vocabulary token (transformers' tokenizer fails on a merge
whose result is missing), and an unknown word falls back to pieces instead of failing.
"""

from __future__ import annotations

import heapq
import json
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Iterable

from transformers import CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def caption_words(captions: Iterable[str]) -> list[str]:
    """Sorted distinct lower-case words, split the way CLIP's pre-tokenizer splits letters."""
    words: set[str] = set()
    for caption in captions:
        words.update(re.findall(r"[a-z]+|[0-9]", caption.lower()))
    return sorted(words)


def learn_merges(words: Iterable[str]) -> list[tuple[str, str]]:
    """BPE merges, most frequent pair first (ties: smallest pair), until every word is one token."""
    symbols = {w: [*w[:-1], w[-1] + "</w>"] for w in sorted(set(words))}
    counts: Counter[tuple[str, str]] = Counter()
    pair_words: dict[tuple[str, str], set[str]] = {}
    for word, parts in symbols.items():
        for pair in zip(parts, parts[1:]):
            counts[pair] += 1
            pair_words.setdefault(pair, set()).add(word)
    # A heap of (−count, pair) with stale entries skipped: the best pair in O(log n).
    heap = [(-c, p) for p, c in counts.items()]
    heapq.heapify(heap)
    merges = []
    while heap:
        negative, best = heapq.heappop(heap)
        if counts.get(best, 0) != -negative:
            continue
        merges.append(best)
        del counts[best]
        touched = set()
        for word in sorted(pair_words.pop(best)):
            old = symbols[word]
            for pair in zip(old, old[1:]):
                if pair != best:
                    counts[pair] -= 1
                    touched.add(pair)
            symbols[word] = new = _merge(old, best)
            for pair in zip(new, new[1:]):
                counts[pair] += 1
                touched.add(pair)
                pair_words.setdefault(pair, set()).add(word)
        for pair in touched:
            if counts[pair] > 0:
                heapq.heappush(heap, (-counts[pair], pair))
            else:
                del counts[pair]
    return merges


def _merge(parts: list[str], pair: tuple[str, str]) -> list[str]:
    out, i = [], 0
    while i < len(parts):
        if i + 1 < len(parts) and (parts[i], parts[i + 1]) == pair:
            out.append(parts[i] + parts[i + 1])
            i += 2
        else:
            out.append(parts[i])
            i += 1
    return out


def write_word_tokenizer(words: Iterable[str], directory: str | Path, max_length: int = 16) -> CLIPTokenizer:
    """Write a CLIPTokenizer for `words` into `directory` and load it back from there."""
    words = sorted(set(words))
    chars = sorted({c for w in words for c in w} | set("abcdefghijklmnopqrstuvwxyz0123456789"))
    vocab_tokens: list[str] = []
    for c in chars:
        vocab_tokens += [c, c + "</w>"]
    merges = learn_merges(words)
    vocab_tokens += [a + b for a, b in merges]
    vocab_tokens = list(dict.fromkeys(vocab_tokens)) + [BOS, EOS]

    directory = Path(directory)
    # A saved pipeline's tokenizer.json would take precedence over the files written here.
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab_tokens)}))
    (directory / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    )
    # transformers 5 ignores vocab_file/merges_file passed to the constructor: build from a folder.
    config = {
        "model_max_length": max_length,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": EOS,
        "tokenizer_class": "CLIPTokenizer",
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    tokenizer = CLIPTokenizer.from_pretrained(directory)
    if len(tokenizer) != len(vocab_tokens):
        raise RuntimeError(f"tokenizer has {len(tokenizer)} tokens, wrote {len(vocab_tokens)}")
    return tokenizer
