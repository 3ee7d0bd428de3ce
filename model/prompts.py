"""Prompts encoded once: `EncodedPrompt` (what a walk is conditioned on) and `PromptCache` (shared by sessions).

    cache = PromptCache(release.text_encoder, refiner=release.refiner)
    encoded = cache.encode("a quiet forest path")     # encodes on the first call, then returns the same object
    encoded.text [1, L, C_text], encoded.mask [1, L]                 stage 1 (Gemma-2 with the instruction prefix)
    encoded.refiner_text [1, L_r, C_r], encoded.refiner_mask [1, L_r]   the refiner (Gemma-3 + connectors), or None

Encoding runs a text encoder, so callers run it off the event loop (the generation worker calls it when a
walk starts). The cache holds the newest `capacity` prompts; it is thread-safe, and two threads asking
for the same new prompt encode it once.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch

# Characters a live prompt may have: the stage-1 layout keeps 300 tokens, and a page is a stranger.
MAX_PROMPT_CHARS = 2000


@dataclass(frozen=True)
class EncodedPrompt:
    """A prompt as the models take it (see the module docstring for shapes)."""

    prompt: str
    text: torch.Tensor
    mask: torch.Tensor
    refiner_text: torch.Tensor | None = None
    refiner_mask: torch.Tensor | None = None


def check_prompt(prompt: Any) -> str:
    """A prompt string of at most MAX_PROMPT_CHARS characters, stripped; ValueError otherwise."""
    if not isinstance(prompt, str):
        raise ValueError(f"a prompt must be a string, got {type(prompt).__name__}")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"a prompt has at most {MAX_PROMPT_CHARS} characters, got {len(prompt)}")
    return prompt.strip()


class PromptCache:
    """Encodes each prompt once with the stage-1 text encoder (and the refiner's, when there is a refiner).

    Args:
        text_encoder: a `model.text_encoder.TextEncoder` (Gemma-2).
        refiner: a `model.refiner.StreamRefiner` or None.
        capacity: prompts kept.
    """

    def __init__(self, text_encoder: Any, refiner: Any = None, capacity: int = 16) -> None:
        if text_encoder is None:
            raise ValueError("PromptCache needs a text encoder")
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be an int >= 1, got {capacity!r}")
        self.text_encoder = text_encoder
        self.refiner = refiner
        self.capacity = capacity
        self.encodes = 0
        self._items: OrderedDict[str, EncodedPrompt] = OrderedDict()
        self._lock = threading.Lock()
        # One encode at a time: a second thread wanting the same prompt waits and then finds it cached.
        self._encode_lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def _cached(self, prompt: str) -> EncodedPrompt | None:
        with self._lock:
            item = self._items.get(prompt)
            if item is not None:
                self._items.move_to_end(prompt)
            return item

    def encode(self, prompt: str) -> EncodedPrompt:
        """The encoded `prompt` (see `check_prompt`), from the cache when it was encoded before."""
        prompt = check_prompt(prompt)
        item = self._cached(prompt)
        if item is not None:
            return item
        with self._encode_lock:
            item = self._cached(prompt)
            if item is not None:
                return item
            with torch.inference_mode():
                text, mask = self.text_encoder.encode(prompt)
                refiner_text = refiner_mask = None
                if self.refiner is not None:
                    refiner_text, refiner_mask = self.refiner.encode_prompt(prompt)
            item = EncodedPrompt(prompt=prompt, text=text, mask=mask, refiner_text=refiner_text, refiner_mask=refiner_mask)
            self.encodes += 1
            with self._lock:
                self._items[prompt] = item
                while len(self._items) > self.capacity:
                    self._items.popitem(last=False)
        return item
