"""A CLIP BPE tokenizer whose vocabulary is the words of a caption set.

The tiny prior needs a real `CLIPTokenizer` (so it loads like SD 1.5's) but SD's 49k-token
vocabulary would dwarf a 64-wide text encoder. We write vocab.json + merges.txt in CLIP's format:
every character (alone and word-final, "c</w>"), every word prefix, and every whole word
("cat</w>"). The merges build each word left to right, so every merge yields an in-vocabulary
token (transformers' tokenizer fails on a merge whose result is missing) and known words become
single tokens; an unknown word falls back to characters instead of failing.
"""

from __future__ import annotations

import json
import re
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


def _merges_for(word: str) -> list[tuple[str, str]]:
    """Left-to-right merges that turn the characters of `word` into the single token word</w>."""
    merges, prefix = [], word[0]
    for i, char in enumerate(word[1:], start=1):
        right = char + "</w>" if i == len(word) - 1 else char
        merges.append((prefix, right))
        prefix += char
    return merges


def write_word_tokenizer(words: Iterable[str], directory: str | Path, max_length: int = 16) -> CLIPTokenizer:
    """Write a CLIPTokenizer for `words` into `directory` and load it back from there."""
    words = sorted(set(words))
    chars = sorted({c for w in words for c in w} | set("abcdefghijklmnopqrstuvwxyz0123456789"))
    vocab_tokens: list[str] = []
    for c in chars:
        vocab_tokens += [c, c + "</w>"]
    merges: list[tuple[str, str]] = []
    for word in words:
        if len(word) > 1:
            for left, right in _merges_for(word):
                merges.append((left, right))
                vocab_tokens.append(left + right)
    # Dedupe keeping first occurrence: the rank of a merge is its first position.
    vocab_tokens = list(dict.fromkeys(vocab_tokens)) + [BOS, EOS]
    merges = list(dict.fromkeys(merges))

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
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
