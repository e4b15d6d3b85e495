"""Prefilled prompt prefixes, computed once per (policy version, category set, instruction).

An entry holds the key/value cache of the prompt's fixed prefix and the compiled verdict
grammar for the same categories. Entries are never handed out: `fork()` gives each
request its own copy to extend, so no request can change what the next one starts from.
A policy's new version gets new entries; old ones age out of the bounded LRU.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import xgrammar
from transformers import Cache


@dataclass(frozen=True, slots=True)
class PrefixKey:
    policy_id: str
    policy_version: str
    category_ids: tuple[str, ...]
    instruction: str | None


@dataclass(frozen=True, slots=True)
class PrefilledPrefix:
    token_count: int
    kv_cache: Cache  # never extended: see fork()
    grammar: xgrammar.CompiledGrammar
    prefill_ms: float

    def fork(self) -> Cache:
        """A private copy of the prefix's cache for one request to extend."""
        return copy.deepcopy(self.kv_cache)


class PrefixCache:
    """A bounded LRU of prefilled prefixes. Not thread-safe: owned by one Explainer."""

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError("the prefix cache needs room for at least one entry")
        self._max_entries = max_entries
        self._entries: OrderedDict[PrefixKey, PrefilledPrefix] = OrderedDict()

    def get_or_build(self, key: PrefixKey, build: Callable[[], PrefilledPrefix]) -> tuple[PrefilledPrefix, bool]:
        """The entry for `key`, building it on a miss; the flag says whether it was cached."""
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            return entry, True
        entry = build()
        self._entries[key] = entry
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        return entry, False

    def peek(self, key: PrefixKey) -> PrefilledPrefix | None:
        """The entry for `key` if cached, without counting as a use."""
        return self._entries.get(key)

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
