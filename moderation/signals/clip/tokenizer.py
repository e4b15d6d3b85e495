"""CLIP's byte-level BPE tokenizer without torch: the serving path of an exported model folder.

A port of open_clip's `SimpleTokenizer` (open_clip/tokenizer.py, 'lower' cleaning, no
reduction mask), reading the same gzipped merges file that `moderation export` copies
into the folder, and returning int64 numpy rows instead of a torch tensor. Text is
cleaned exactly as open_clip does (ftfy.fix_text, HTML unescaped twice, whitespace
collapsed, lower-cased) and split with the same `regex` pattern, so token ids are
identical: `moderation export` refuses to write a folder whose tokenizer disagrees with
open_clip's on the probe texts, and tests/unit/test_model_folder.py compares them on
every prompt of the shipped policies and a unicode corpus.
"""

from __future__ import annotations

import gzip
import html
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import ftfy
import numpy as np
import regex

SPECIAL_TOKENS = ("<start_of_text>", "<end_of_text>")
# open_clip keeps the first 49152 - 256 - 2 merges of the file (its vocabulary is 49408 ids).
MERGES_KEPT = 49152 - 256 - 2


@lru_cache
def bytes_to_unicode() -> dict[int, str]:
    """Every byte as a printable unicode character (GPT-2's table, as open_clip has it)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))


def clean(text: str) -> str:
    """open_clip's 'lower' cleaning: ftfy, HTML entities (twice), collapsed whitespace, lower case."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).strip().lower()


class ClipTokenizer:
    """Texts -> [N, context_length] int64 token ids, start and end tokens included, zero-padded."""

    def __init__(self, merges_path: Path, context_length: int = 77):
        self.context_length = context_length
        self.byte_encoder = bytes_to_unicode()
        lines = gzip.open(merges_path).read().decode("utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines[1 : MERGES_KEPT + 1]]
        vocab = list(self.byte_encoder.values())
        vocab += [v + "</w>" for v in vocab]
        vocab += ["".join(merge) for merge in merges]
        vocab += SPECIAL_TOKENS
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.bpe_ranks = {merge: i for i, merge in enumerate(merges)}
        self.sot, self.eot = self.encoder[SPECIAL_TOKENS[0]], self.encoder[SPECIAL_TOKENS[1]]
        self._cache: dict[str, str] = {t: t for t in SPECIAL_TOKENS}
        self._pattern = regex.compile("|".join(SPECIAL_TOKENS) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE)

    def bpe(self, token: str) -> str:
        if token in self._cache:
            return self._cache[token]
        word = (*token[:-1], token[-1] + "</w>")
        pairs = _pairs(word)
        if not pairs:
            return token + "</w>"
        while True:
            bigram = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            merged: list[str] = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    merged.extend(word[i:])
                    break
                merged.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
            if len(word) == 1:
                break
            pairs = _pairs(word)
        joined = " ".join(word)
        self._cache[token] = joined
        return joined

    def encode(self, text: str) -> list[int]:
        ids = []
        for token in self._pattern.findall(clean(text)):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[piece] for piece in self.bpe(token).split(" "))
        return ids

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        rows = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for i, text in enumerate(texts):
            ids = [self.sot, *self.encode(text), self.eot]
            if len(ids) > self.context_length:
                ids = ids[: self.context_length]
                ids[-1] = self.eot
            rows[i, : len(ids)] = ids
        return rows


def _pairs(word: tuple[str, ...]) -> set[tuple[str, str]]:
    return set(zip(word, word[1:], strict=False))
