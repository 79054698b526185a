"""Context sizes: one rule for every task (and for the dry run that plans it)."""

from __future__ import annotations


def context_for(need: int, floor: int = 1024) -> int:
    """The context to load for a request of `need` tokens: the next power of two, at least `floor`
    (llama.cpp's KV cache is allocated whole; powers of two keep reloads rare across a batch)."""
    return max(floor, 1 << (max(1, need) - 1).bit_length())
