"""Speculative decoding for the local engine: drafters propose tokens, the target verifies them.

The engine evaluates the pending token and the drafted ones in one `llama_decode`, then samples each
position with the request's own sampler chain (grammar, penalties, seed and all) and keeps drafted
tokens only while they equal what was sampled; the first mismatch ends the step, its sampled token
becomes the next pending one, and the KV rows after it are removed. Sampling happens exactly as
often, on the same logits, as without drafting, so the text is the target's own, provided the
logits do not depend on how many rows the batch has.

That proviso is the trap. Measured here (llama.cpp CPU backend of llama-cpp-python 0.3.36, Gemma 3
270M Q4_K_M, repacked weights, flash attention auto or off): the logits of a row are bit-identical
to a one-row decode for batches of 1 to 3 rows; from 4 rows on the repacked matrix kernel runs the
rows in groups of 4 (gemm instead of gemv) and they differ, enough to flip a greedy near-tie. With
plain (not repacked) weights rows stayed identical up to 7 with flash attention auto. Hence
DRAFT_MAX_EXACT = 2: the pending token plus 2 drafted tokens, 3 rows per sequence and step. A larger
`draft_max` is allowed and faster where a wide verify is cheap, but no longer promises the
undrafted text on such a backend.
"""

from __future__ import annotations

from collections.abc import Sequence

DRAFT_MAX_EXACT = 2  # verify rows = 1 + this; see the module docstring
NGRAM_MAX = 3  # the longest n-gram looked up
NGRAM_MIN = 2  # a shorter match than this proposes nothing (one-token matches are mostly wrong)
SEPARATOR = -1  # stands for a media chunk in the history: never drafted, never matched across


class NgramDraft:
    """Prompt lookup: find the most recent earlier occurrence of the last n tokens (n from NGRAM_MAX
    down to NGRAM_MIN) in the prompt and the text so far, and propose the tokens that followed it.

    The index maps each n-gram to the position right after its latest occurrence whose continuation
    is known, so a lookup never finds the tail itself; appending a token is O(NGRAM_MAX)."""

    def __init__(self, history: Sequence[int]) -> None:
        self.tokens: list[int] = []
        self._index: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in range(NGRAM_MIN, NGRAM_MAX + 1)}
        for tok in history:
            self.push(tok)

    def push(self, tok: int) -> None:
        toks = self.tokens
        i = len(toks)  # the position `tok` takes: the continuation of the n-grams ending just before it
        for n, index in self._index.items():
            if i >= n:
                key = tuple(toks[i - n:i])
                if SEPARATOR not in key:
                    index[key] = i
        toks.append(tok)

    def propose(self, k: int) -> list[int]:
        toks = self.tokens
        if k <= 0:
            return []
        for n in range(NGRAM_MAX, NGRAM_MIN - 1, -1):
            if len(toks) < n:
                continue
            key = tuple(toks[-n:])
            at = self._index[n].get(key)
            if at is None:
                continue
            draft = toks[at:at + k]
            if SEPARATOR in draft:
                draft = draft[: draft.index(SEPARATOR)]
            if draft:
                return draft
        return []
