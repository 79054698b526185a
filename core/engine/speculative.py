"""Speculative decoding for the local engine: drafters propose tokens, the target verifies them.
Three drafters: `NgramDraft` (prompt lookup), `ModelDraft` (a smaller model with the target's
vocabulary, checked by `vocab_mismatch` before the target loads) and `MtpDraft` (a Gemma 4
assistant, llama.cpp's `gemma4-assistant`: multi-token prediction on the target's own KV cache and
hidden state).

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

from ..model import ASSISTANT_ARCH

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


DRAFT_METHODS = ("ngram", "mtp")


def parse_draft(value: str) -> str:
    """A --draft value: "ngram" or "mtp" (any case), else a draft model's path; an empty one is refused."""
    from ..errors import UsageError

    if not value.strip():
        raise UsageError(None, "is empty", "give ngram, mtp or a draft model GGUF", parameter="draft")
    return value.lower() if value.lower() in DRAFT_METHODS else value


def check_draft_file(path: str) -> None:
    """A draft model path that is not a readable GGUF file: ModelError, before anything loads."""
    from ..errors import ModelError

    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except FileNotFoundError:
        raise ModelError(f"draft model {path}", "no such file",
                         "give a GGUF file, or {draft} ngram or {draft} mtp") from None
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


def draft_context_params(L: Any, *, n_ctx: int, n_batch: int, n_seq: int, threads: int, flash_attn: int,
                         swa_full: bool) -> Any:
    """llama_context_params of a drafter's context: one KV stream per sequence (sequence ids are the
    target's), as the target's context is laid out."""
    cp = L.llama_context_default_params()
    cp.n_ctx = n_ctx
    cp.n_batch = cp.n_ubatch = n_batch
    cp.n_seq_max = n_seq
    cp.kv_unified = False
    cp.n_threads = cp.n_threads_batch = threads
    cp.flash_attn_type = flash_attn
    cp.swa_full = swa_full
    cp.no_perf = True
    return cp


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
        cp = draft_context_params(L, n_ctx=per_seq * n_seq, n_batch=self.n_batch, n_seq=n_seq, threads=threads,
                                  flash_attn=flash_attn, swa_full=True)
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


# --- Gemma 4 multi-token prediction ---------------------------------------------------------------------
MTP_TARGET_ARCH = "gemma4"


def mtp_bindings(L: Any) -> tuple[Any, str | None]:
    """llama.cpp's MTP interface as this llama-cpp-python binds it: (the `llama_cpp_ext` module, None),
    or (None, what is missing). The nextn getters live in a module its authors mark as not public;
    its functions are looked up by symbol name when it is imported, so an older or differently built
    library raises there, and a missing context field or constant is checked here too."""
    import importlib

    try:  # not `from llama_cpp import ...`: that runs the package's __init__ (see native.bindings),
        # whose logger then prints llama.cpp's log to stderr
        X = importlib.import_module("llama_cpp.llama_cpp_ext")
    except (ImportError, AttributeError, OSError) as exc:
        return None, f"llama_cpp.llama_cpp_ext cannot be loaded ({exc})"
    for name in ("llama_set_embeddings_nextn", "llama_get_embeddings_nextn_ith", "llama_get_ctx_other"):
        if not callable(getattr(X, name, None)):
            return None, f"llama_cpp.llama_cpp_ext has no {name}"
    fields = {f[0] for f in getattr(L.llama_context_params, "_fields_", ())}
    for name in ("ctx_type", "ctx_other"):
        if name not in fields:
            return None, f"llama_context_params has no {name}"
    if not hasattr(L, "LLAMA_CONTEXT_TYPE_MTP"):
        return None, "llama_cpp has no LLAMA_CONTEXT_TYPE_MTP"
    if not callable(getattr(L, "llama_model_n_embd_out", None)):
        return None, "llama_cpp has no llama_model_n_embd_out"
    return X, None


def assistant_mismatch(target: Any, assistant: Any) -> str | None:
    """Why a gemma4-assistant GGUF cannot draft for the target model (both GGUFInfo), or None."""
    if target.architecture != MTP_TARGET_ARCH:
        return f"a Gemma 4 assistant drafts for Gemma 4 models only (this model is {target.architecture})"
    width = assistant.get(f"{ASSISTANT_ARCH}.embedding_length_out")
    if width is not None and target.n_embd is not None and int(width) != int(target.n_embd):
        return f"it was made for a model {width} wide, this one is {target.n_embd} wide"
    return None


class MtpDraft:
    """A Gemma 4 assistant in an MTP context on the target's context (`ctx_other`): it owns no KV
    cache (its attention reads the target's last sliding and last full layer) and gets, for the token
    the target evaluates next, the target's hidden state from the position that predicted it (the
    target context outputs it beside the logits, `llama_set_embeddings_nextn`, for rows with logits
    only, so the target computes exactly what it computes without drafting). Each draft step is one
    decode for all sequences: a row per sequence at the pending token's position (all drafted tokens
    of a step sit at that position, as llama.cpp's reference loop has them), with the assistant's own
    hidden output as the next step's input; greedy. Nothing is written to any KV cache, so a rejected
    draft needs no rollback here."""

    def __init__(self, L: Any, X: Any, model: Any, target_ctx: Any, *, n_ctx: int, n_seq: int, threads: int,
                 flash_attn: int, swa_full: bool) -> None:
        import numpy as np

        self._L, self._X, self._np = L, X, np
        self._model = model
        self._ctx: Any = None
        self._batch: Any = None
        self._greedy: Any = None
        self._target = target_ctx
        self.n_embd = int(L.llama_model_n_embd_out(model))
        self.n_batch = max(8, n_seq)
        cp = draft_context_params(L, n_ctx=n_ctx, n_batch=self.n_batch, n_seq=n_seq, threads=threads,
                                  flash_attn=flash_attn, swa_full=swa_full)
        cp.ctx_type = L.LLAMA_CONTEXT_TYPE_MTP
        cp.ctx_other = target_ctx
        if "n_outputs_max" in {f[0] for f in L.llama_context_params._fields_}:
            cp.n_outputs_max = self.n_batch
        self._ctx = L.llama_init_from_model(model, cp)
        if not self._ctx:
            self.close()
            raise MemoryError("llama.cpp could not create the assistant's context")
        other = X.llama_get_ctx_other(self._ctx)
        if not other or ctypes_address(other) != ctypes_address(target_ctx):
            self.close()
            raise MemoryError("the assistant's context does not share the model's KV cache")
        X.llama_set_embeddings_nextn(self._ctx, True, True)
        X.llama_set_embeddings_nextn(target_ctx, True, True)  # masked: rows with logits only
        self._vocab = L.llama_model_get_vocab(model)
        self._batch = L.llama_batch_init(self.n_batch, self.n_embd, 1)
        self._tokens = (L.llama_token * self.n_batch)()
        self._batch.token = self._tokens  # a row carries a token and the hidden state it follows
        self._embd = np.ctypeslib.as_array(self._batch.embd, shape=(self.n_batch, self.n_embd))
        self._greedy = L.llama_sampler_init_greedy()

    def hidden(self, row: int) -> Any:
        """A copy of the target's hidden state at batch row `row` of its last decode (-1: the last row
        with logits), or None when llama.cpp has none (a decode that only evaluated media)."""
        return self._nextn(self._target, row)

    def _nextn(self, ctx: Any, row: int) -> Any:
        ptr = self._X.llama_get_embeddings_nextn_ith(ctx, row)
        if not ptr:
            return None
        return self._np.ctypeslib.as_array(ptr, shape=(self.n_embd,)).copy()

    def propose(self, wants: list[tuple[int, int, int, Any, int]]) -> dict[int, list[int]]:
        """Up to k tokens after each (seq, pending token, its position, hidden state, k)."""
        L = self._L
        drafts: dict[int, list[int]] = {}
        live = [(seq, tok, pos, h, k) for seq, tok, pos, h, k in wants if k > 0 and h is not None][: self.n_batch]
        batch = self._batch
        while live:
            for i, (seq, tok, pos, h, _) in enumerate(live):
                batch.token[i] = tok
                batch.pos[i] = pos
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = seq
                batch.logits[i] = True
                self._embd[i] = h
            batch.n_tokens = len(live)
            if L.llama_decode(self._ctx, batch) != 0:
                break
            step = live
            live = []
            for i, (seq, _, pos, _, k) in enumerate(step):
                tok = L.llama_sampler_sample(self._greedy, self._ctx, i)
                out = drafts.setdefault(seq, [])
                out.append(tok)
                if len(out) >= k or L.llama_vocab_is_eog(self._vocab, tok):
                    continue
                h = self._nextn(self._ctx, i)
                if h is not None:
                    live.append((seq, tok, pos, h, k))
        return drafts

    def close(self) -> None:
        L = self._L
        if self._greedy:
            L.llama_sampler_free(self._greedy)
            self._greedy = None
        if self._batch is not None:
            import ctypes

            self._batch.token = ctypes.POINTER(L.llama_token)()  # ours, not the batch's to free
            L.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx:
            L.llama_free(self._ctx)
            self._ctx = None
            self._X.llama_set_embeddings_nextn(self._target, False, False)
        if self._model:
            L.llama_model_free(self._model)
            self._model = None


def ctypes_address(ptr: Any) -> int:
    """The address a ctypes pointer (or c_void_p, or int) holds."""
    import ctypes

    if isinstance(ptr, int):
        return ptr
    return ctypes.cast(ptr, ctypes.c_void_p).value or 0
