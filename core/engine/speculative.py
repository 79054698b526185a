"""Speculative decoding for the local engine: drafters propose tokens, the target verifies them.
Two drafters: `NgramDraft` (prompt lookup) and `ModelDraft` (a smaller model with the target's
vocabulary, checked by `vocab_mismatch` before the target loads).

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
from typing import Any

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


# --- a separate draft model ---------------------------------------------------------------------------
# As llama.cpp's common_speculative_are_compatible (common/speculative.cpp): vocabulary sizes may differ
# by this much (tokens past the shorter one are never drafted), texts are compared from this id on.
VOCAB_MAX_SIZE_DIFFERENCE = 128
VOCAB_CHECK_START_TOKEN_ID = 5
_VOCAB_TYPES = {0: "none", 1: "SentencePiece", 2: "BPE", 3: "WordPiece", 4: "Unigram", 5: "RWKV", 6: "PLaMo-2"}


def check_draft_file(path: str) -> None:
    """A draft model path that is not a readable GGUF file: ModelError, before anything loads."""
    from ..errors import ModelError

    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except FileNotFoundError:
        raise ModelError(f"draft model {path}", "no such file", "give a GGUF file or {draft} ngram") from None
    except IsADirectoryError:
        raise ModelError(f"draft model {path}", "is a directory, not a GGUF file") from None
    except OSError as exc:
        raise ModelError(f"draft model {path}", f"cannot be read ({exc.strerror})") from None
    if magic != b"GGUF":
        raise ModelError(f"draft model {path}", "is not a GGUF file")


def vocab_mismatch(L: Any, target: Any, draft: Any) -> str | None:
    """Why the draft vocabulary cannot stand in for the target's (llama_vocab pointers), or None."""
    kind_t, kind_d = L.llama_vocab_type(target), L.llama_vocab_type(draft)
    if kind_t != kind_d:
        return (f"its tokenizer ({_VOCAB_TYPES.get(kind_d, kind_d)}) differs from the model's "
                f"({_VOCAB_TYPES.get(kind_t, kind_t)})")
    for name, add, tok in (("BOS", L.llama_vocab_get_add_bos, L.llama_vocab_bos),
                           ("EOS", L.llama_vocab_get_add_eos, L.llama_vocab_eos)):
        if bool(add(target)) != bool(add(draft)) or tok(target) != tok(draft):
            return f"its {name} token ({tok(draft)}) differs from the model's ({tok(target)})"
    for name, tok in (("EOT", L.llama_vocab_eot), ("padding", L.llama_vocab_pad)):
        if tok(target) != tok(draft):
            return f"its {name} token ({tok(draft)}) differs from the model's ({tok(target)})"
    n_t, n_d = L.llama_vocab_n_tokens(target), L.llama_vocab_n_tokens(draft)
    if abs(n_t - n_d) > VOCAB_MAX_SIZE_DIFFERENCE:
        return f"its vocabulary has {n_d} tokens, the model's {n_t}"
    text, attr = L.llama_vocab_get_text, L.llama_vocab_get_attr
    for i in range(VOCAB_CHECK_START_TOKEN_ID, min(n_t, n_d)):
        if text(target, i) != text(draft, i) or attr(target, i) != attr(draft, i):
            return f"token {i} differs ({text(draft, i)!r} against the model's {text(target, i)!r})"
    return None


class ModelDraft:
    """A smaller model with the target's vocabulary, in a context of its own with one sequence per
    target sequence (the same ids). It proposes greedily. What its KV cache holds per sequence is
    kept as a token list; before each proposal the cache is cut back (`llama_memory_seq_rm`) to the
    longest prefix it shares with the request's history, which both drops the rejected drafts of the
    last step and reuses a shared prompt prefix across requests. The sliding-window cache is kept
    full so that cutting the tail is always exact."""

    def __init__(self, L: Any, model: Any, *, n_ctx: int, n_seq: int, threads: int, flash_attn: int,
                 n_vocab_target: int) -> None:
        self._L = L
        self._model = model
        self._ctx: Any = None
        self._batch: Any = None
        self._greedy: Any = None
        self.n_vocab = min(n_vocab_target, L.llama_vocab_n_tokens(L.llama_model_get_vocab(model)))
        n_train = L.llama_model_n_ctx_train(model)
        per_seq = min(n_ctx, n_train) if n_train > 0 else n_ctx
        if n_seq > 1:
            per_seq = -(-per_seq // 256) * 256
        self.n_batch = 512
        cp = L.llama_context_default_params()
        cp.n_ctx = per_seq * n_seq
        cp.n_batch = cp.n_ubatch = self.n_batch
        cp.n_seq_max = n_seq
        cp.kv_unified = False
        cp.n_threads = cp.n_threads_batch = threads
        cp.flash_attn_type = flash_attn
        cp.swa_full = True
        cp.no_perf = True
        self._ctx = L.llama_init_from_model(model, cp)
        if not self._ctx:
            self.close()
            raise MemoryError("llama.cpp could not create the draft model's context")
        self.n_ctx = int(L.llama_n_ctx_seq(self._ctx)) if n_seq > 1 else per_seq
        self._mem = L.llama_get_memory(self._ctx)
        self._vocab = L.llama_model_get_vocab(model)
        self._batch = L.llama_batch_init(self.n_batch, 0, 1)
        self._greedy = L.llama_sampler_init_greedy()
        self._held: list[list[int]] = [[] for _ in range(n_seq)]

    def close(self) -> None:
        L = self._L
        if self._greedy:
            L.llama_sampler_free(self._greedy)
            self._greedy = None
        if self._batch is not None:
            L.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx:
            L.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            L.llama_model_free(self._model)
            self._model = None

    def forget(self, seq: int) -> None:
        self._L.llama_memory_seq_rm(self._mem, seq, -1, -1)
        self._held[seq] = []

    def _cut(self, seq: int, history: list[int]) -> int:
        """Cut sequence `seq` back to its longest common prefix with `history`, leaving at least one
        token of history to evaluate (its logits give the first draft); return the kept length."""
        held = self._held[seq]
        n = min(len(held), len(history) - 1)
        keep = n
        if held[:n] != history[:n]:
            keep = 0
            for a, b in zip(held, history[:n], strict=False):
                if a != b:
                    break
                keep += 1
        if keep < len(held):
            if not self._L.llama_memory_seq_rm(self._mem, seq, keep, -1):
                self.forget(seq)
                return 0
            del held[keep:]
        return keep

    def _decode(self, rows: list[tuple[int, int, bool]]) -> bool:
        """Evaluate (seq, token, logits) rows at each sequence's next position."""
        batch = self._batch
        for i, (seq, tok, logits) in enumerate(rows):
            held = self._held[seq]
            batch.token[i] = tok
            batch.pos[i] = len(held)
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = logits
            held.append(tok)
        batch.n_tokens = len(rows)
        if self._L.llama_decode(self._ctx, batch) == 0:
            return True
        for seq in {r[0] for r in rows}:  # what the failed decode left is unknown
            self.forget(seq)
        return False

    def propose(self, wants: list[tuple[int, list[int], int]]) -> dict[int, list[int]]:
        """Draft up to k tokens after `history` for each (seq, history, k); the history ends with the
        token the target evaluates next. Sequences are drafted together, one decode per position."""
        L = self._L
        drafts: dict[int, list[int]] = {}
        live: list[tuple[int, int]] = []  # (seq, k) still drafting
        # The history not yet in the draft's cache (mostly the last step's pending and accepted tokens;
        # a whole prompt after admission), packed into batches; the last row of each gives logits.
        rows: list[tuple[int, int, bool]] = []
        owners: list[tuple[int, int, int]] = []  # (seq, k, row of its logits)

        def flush() -> None:
            if rows and self._decode(rows):
                for seq, k, idx in owners:
                    self._take(drafts, live, seq, k, idx)
            rows.clear()
            owners.clear()

        for seq, history, k in wants:
            k = min(k, self.n_ctx - len(history))
            if k <= 0 or not history:
                continue
            todo = history[self._cut(seq, history):]
            if len(rows) + len(todo) > self.n_batch:
                flush()
            while len(todo) > self.n_batch:  # a long prompt: evaluate it on its own, in parts
                part, todo = todo[:self.n_batch], todo[self.n_batch:]
                rows.extend((seq, t, False) for t in part)
                ok = self._decode(rows)
                rows.clear()
                if not ok:
                    break
            else:
                rows.extend((seq, t, j == len(todo) - 1) for j, t in enumerate(todo))
                owners.append((seq, k, len(rows) - 1))
        flush()
        while live:
            step = list(live)
            live.clear()
            rows.extend((seq, drafts[seq][-1], True) for seq, _ in step)
            if not self._decode(rows):
                break
            for i, (seq, k) in enumerate(step):
                self._take(drafts, live, seq, k, i)
            rows.clear()
        del L
        return drafts

    def _take(self, drafts: dict[int, list[int]], live: list[tuple[int, int]], seq: int, k: int, idx: int) -> None:
        L = self._L
        tok = L.llama_sampler_sample(self._greedy, self._ctx, idx)
        if tok >= self.n_vocab:  # a token the target's vocabulary lacks: the draft ends before it
            return
        out = drafts.setdefault(seq, [])
        out.append(tok)
        if len(out) < k and not L.llama_vocab_is_eog(self._vocab, tok):
            live.append((seq, k))
