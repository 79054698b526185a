"""The local engine: llama.cpp's C API and libmtmd through llama-cpp-python's ctypes bindings.

We drive the low-level API ourselves rather than `llama_cpp.Llama` + its chat handlers because
those refuse audio-only projectors, never set image token limits, clear the KV cache every turn,
do not strip thinking, and sample in Python (measured 1.5x slower per token here).

One request = render the conversation with the GGUF's chat template (media as mtmd markers),
`mtmd_tokenize` it into chunks, keep the longest prefix of chunks already in the KV cache,
evaluate the rest, then sample with llama.cpp's own sampler chain.

Structure. The context holds `parallel` sequences (`_Slot`: its sequence id, the signatures of what
its KV cache holds, its position). A request (`_Request`: prepared prompt, options, its own sampler
chain and stats, a queue of text) is admitted into a free slot (`_admit`: prefill, first token),
then decoded by `_step`, which puts the pending token (and drafted ones, see speculative.py) of
every active request into one `llama_decode` and samples each with its own chain; `_finish` frees
the slot for the next request. With one sequence the caller's thread drives the steps itself (the
generator of `generate`); with several, a decode thread (`_schedule`) owns the context and the
callers' threads read their request's queue, so concurrent `generate` calls share every step.
Operations on saved states use sequence 0 with no request running (`_exclusive`).
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import hashlib
import os
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import interrupt
from ..cpus import usable_cpus
from ..errors import ContextOverflow, GemmapipeError, ModelError
from ..model import ASSISTANT_ARCH, AUDIO, VISION, ModelPair
from . import gemma4
from .base import EngineConfig, EngineInfo, EngineState, EngineStats, GenerateOptions, StateError, TokenCount
from .native import bindings, quiet_native_logs
from .parts import Audio, CachedMessage, Image, Message, Placeholder, Text
from .speculative import (
    SEPARATOR,
    ModelDraft,
    MtpDraft,
    NgramDraft,
    assistant_mismatch,
    check_draft_file,
    mtp_bindings,
    vocab_mismatch,
)
from .template import render_prompt

if TYPE_CHECKING:
    import numpy as np

CHUNK_TEXT, CHUNK_IMAGE, CHUNK_AUDIO = 0, 1, 2
_KV_TYPES = {"f16": 1, "q8_0": 8, "q4_0": 2, "f32": 0}
_FLASH = {"auto": -1, "off": 0, "on": 1}
# End-of-turn tokens of the Gemma 4 format; used only when the GGUF's vocabulary has them.
_STOP_TEXTS = ("<turn|>", "<|tool_response>", "<eos>")
_THOUGHT_OPEN, _THOUGHT_CLOSE = "<|channel>", "<channel|>"
# What libmtmd puts around gemma4uv/gemma4ua media (mtmd.cpp: img_beg/img_end, aud_beg/aud_end).
_MEDIA_WRAPPERS = {"image": ("<|image>", "<image|>"), "audio": ("<|audio>", "<audio|>")}

def default_threads() -> int:
    return max(1, min(usable_cpus(), 16))


@dataclass
class _Prepared:
    chunks: Any  # mtmd_input_chunks_p
    sigs: list[tuple[Any, ...]]  # one signature per chunk, to find the cached prefix
    kinds: list[str]
    n_tokens: list[int]
    bitmaps: list[Any]
    text: str = ""  # the rendered prompt, media as markers

    @property
    def total(self) -> int:
        return sum(self.n_tokens)


@dataclass(eq=False)
class _Slot:
    """One sequence of the context and what its KV cache holds."""

    seq: int
    cached: list[tuple[Any, ...]] = field(default_factory=list)  # signatures of the KV cache, in order
    n_past: int = 0
    # SHA-256 of the prompt text up to its last media marker when the KV cache holds exactly a
    # `prefill` of it (what `generate_cached` needs to trust a restored state); else None.
    prefix_sha: str | None = None
    busy: bool = False
    last_used: int = 0


@dataclass(eq=False)
class _Request:
    """One generate call on its way through the context."""

    prep: _Prepared
    options: GenerateOptions
    stats: EngineStats
    pin: _Slot | None = None  # a request that must run in this slot (generate_cached)
    slot: _Slot | None = None
    chain: Any = None
    pending: int | None = None  # sampled and handed out, not evaluated yet
    generated: list[int] = field(default_factory=list)  # sampled and evaluated, so in the KV cache
    ngram: NgramDraft | None = None
    draft_prompt: list[int] | None = None  # the prompt's text tokens, for a draft model
    mtp_h: Any = None  # the target's hidden state where `pending` was sampled, for a Gemma 4 assistant
    greedy: bool = False  # sampled by argmax (see LocalEngine._sample)
    out: deque[str] = field(default_factory=deque)
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))
    thought: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))
    in_thought: bool = False
    t0: float = 0.0
    cancelled: bool = False
    finished: bool = False
    error: BaseException | None = None


class LocalEngine:
    """Owns one llama model + context and one mtmd context. With `config.parallel` > 1, `generate`
    may be called from several threads at once (up to that many are decoded together); with 1 it
    is not thread-safe. `stats` is per calling thread."""

    def __init__(self, config: EngineConfig, pair: ModelPair, *, n_ctx: int, max_image_tokens: int = 0) -> None:
        llama_cpp, mtmd_cpp = bindings()
        self._L = llama_cpp
        self._M = mtmd_cpp
        self.config = config
        self.pair = pair
        self._local = threading.local()
        self._totals = EngineStats()
        self._totals_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        quiet_native_logs(config.verbose)
        llama_cpp.llama_backend_init()

        mparams = llama_cpp.llama_model_default_params()
        offload = llama_cpp.llama_supports_gpu_offload()
        mparams.n_gpu_layers = (999 if config.gpu_layers < 0 else config.gpu_layers) if offload else 0
        if os.environ.get("GEMMAPIPE_NO_REPACK", "") not in ("", "0"):
            # Repacked CPU weights use AMX where the CPU reports it; some hypervisors do not grant
            # AMX state and the process dies with SIGILL. This keeps the plain layout.
            mparams.use_extra_bufts = False
        # Loading returns early once a stop is requested (the callback says "abort"), then we raise.
        self._keep_alive = [llama_cpp.llama_progress_callback(_load_progress)]
        mparams.progress_callback = self._keep_alive[0]
        interrupt.stage("load")
        self._drafter: ModelDraft | MtpDraft | None = None
        self._mtp: Any = None  # llama_cpp_ext, when the draft model is a Gemma 4 assistant
        draft_model = None
        if config.draft not in (None, "ngram"):
            draft_model = self._load_draft(str(config.draft), mparams)
        self._model = llama_cpp.llama_model_load_from_file(str(config.model).encode(), mparams)
        if draft_model and (not self._model or interrupt.requested()):
            llama_cpp.llama_model_free(draft_model)
        interrupt.check()
        if not self._model:
            raise ModelError(f"model {config.model}",
                             "llama.cpp could not load it (unsupported architecture or corrupt)",
                             "run with -v to see llama.cpp's log")
        self._draft_model = draft_model
        self._ctx: Any = None
        self._mtmd: Any = None
        self._sampler_batch: Any = None
        try:
            self._setup(config, pair, n_ctx, max_image_tokens)
        except BaseException:
            self.close()
            raise

    def _setup(self, config: EngineConfig, pair: ModelPair, n_ctx: int, max_image_tokens: int) -> None:
        L, M = self._L, self._M
        self._vocab = L.llama_model_get_vocab(self._model)
        self.n_vocab = L.llama_vocab_n_tokens(self._vocab)
        n_ctx_train = L.llama_model_n_ctx_train(self._model)
        self.n_ctx = max(256, min(n_ctx, n_ctx_train) if n_ctx_train > 0 else n_ctx)
        self._n_seq = max(1, config.parallel)
        if self._n_seq > 1:  # llama.cpp gives each sequence n_ctx / n_seq_max cells, padded to 256
            self.n_ctx = -(-self.n_ctx // 256) * 256
        # Image tokens are decoded non-causally: a whole image must fit in one ubatch or llama.cpp aborts.
        self.n_batch = max(512, max_image_tokens)
        self.threads = config.threads or default_threads()

        cparams = L.llama_context_default_params()
        cparams.n_ctx = self.n_ctx * self._n_seq
        cparams.n_batch = self.n_batch
        cparams.n_ubatch = self.n_batch
        # One KV stream per sequence (kv_unified off): each attends only to its own cells.
        cparams.n_seq_max = self._n_seq
        cparams.kv_unified = False
        cparams.n_threads = self.threads
        cparams.n_threads_batch = self.threads
        cparams.flash_attn_type = _FLASH.get(config.flash_attn, -1)
        cparams.type_k = cparams.type_v = _KV_TYPES.get(config.cache_type, 1)
        cparams.swa_full = config.swa_full
        cparams.no_perf = True
        self._ctx = L.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            raise GemmapipeError("context", f"llama.cpp could not create a {self.n_ctx}-token context"
                                 + (f" for each of {self._n_seq} sequences" if self._n_seq > 1 else ""),
                                 "lower {ctx_size} or use a smaller {cache_type}"
                                 + (" or fewer {jobs}" if self._n_seq > 1 else ""))
        if self._n_seq > 1:
            self.n_ctx = int(L.llama_n_ctx_seq(self._ctx))
        self._mem = L.llama_get_memory(self._ctx)
        self._adapters: list[Any] = []  # LoRA handles (core/lora.py), freed after the context in close()
        if config.lora:
            from ..lora import load_adapters

            self._adapters = load_adapters(L, self._model, self._ctx, config.lora, pair.model)
        # Checked by llama.cpp between graph nodes while a prompt is evaluated, so a long prefill stops
        # within one node of a signal. Not while decoding: a Python call per node cost ~15% of the
        # decode speed, and a one-token decode is short enough to check after it returns.
        self._abort = L.ggml_abort_callback(_abort_requested)
        self._no_abort = L.ggml_abort_callback(0)
        self.n_swa = L.llama_model_n_swa(self._model)

        if pair.mmproj is not None:
            mp = M.mtmd_context_params_default()
            mp.use_gpu = bool(L.llama_supports_gpu_offload()) and config.gpu_layers != 0
            mp.n_threads = self.threads
            mp.print_timings = config.verbose
            mp.warmup = False
            if config.image_min_tokens:
                mp.image_min_tokens = config.image_min_tokens
            if config.image_max_tokens:
                mp.image_max_tokens = config.image_max_tokens
            self._mtmd = M.mtmd_init_from_file(str(pair.mmproj.path).encode(), self._model, mp)
            if not self._mtmd:
                raise ModelError(f"projector {pair.mmproj.path}", "libmtmd could not load it for this model",
                                 "run with -v to see why; the mmproj must come from the same model")
            self.marker = (M.mtmd_default_marker() or b"<__media__>").decode()
            self.supports = {VISION: bool(M.mtmd_support_vision(self._mtmd)),
                             AUDIO: bool(M.mtmd_support_audio(self._mtmd))}
        else:
            self.marker = "<__media__>"
            self.supports = {VISION: False, AUDIO: False}

        self.template = None if config.no_template else pair.model.get("tokenizer.chat_template")
        self.bos_text = self._token_text(L.llama_vocab_bos(self._vocab))
        self.add_bos = bool(L.llama_vocab_get_add_bos(self._vocab))
        self._stop_ids = {t for t in (self._single_token(s) for s in _STOP_TEXTS) if t is not None}
        self._thought_open = self._single_token(_THOUGHT_OPEN)
        self._thought_close = self._single_token(_THOUGHT_CLOSE)
        # A model whose vocabulary lacks the media wrapper tokens (a projector grafted onto another
        # model, as our probes are) would read them as stray text: drop them there.
        self._foreign_wrappers = {
            kind: tuple(tuple(self.tokenize(s, add_special=False, parse_special=True)) for s in pair_)
            for kind, pair_ in _MEDIA_WRAPPERS.items()
            if any(self._single_token(s) is None for s in pair_)
        }
        suppress = pair.model.get("tokenizer.ggml.suppress_tokens") or []
        self._suppress = [int(t) for t in suppress if 0 <= int(t) < self.n_vocab]
        self._suppress_set = frozenset(self._suppress)
        import numpy

        self._np = numpy
        self._slots = [_Slot(i) for i in range(self._n_seq)]
        self._uses = 0
        self._batch = L.llama_batch_init(self.n_batch, 0, 1)
        self._draft = config.draft
        self._draft_max = max(0, config.draft_max)
        if self._draft_model:
            model, self._draft_model = self._draft_model, None
            try:
                if self._mtp is not None:
                    self._drafter = MtpDraft(L, self._mtp, model, self._ctx, n_ctx=self.n_ctx * self._n_seq,
                                             n_seq=self._n_seq, threads=self.threads,
                                             flash_attn=_FLASH.get(config.flash_attn, -1), swa_full=config.swa_full)
                else:
                    self._drafter = ModelDraft(L, model, n_ctx=self.n_ctx, n_seq=self._n_seq, threads=self.threads,
                                               flash_attn=_FLASH.get(config.flash_attn, -1),
                                               n_vocab_target=self.n_vocab)
            except MemoryError:
                raise GemmapipeError(f"draft model {self._draft}", "llama.cpp could not create its context",
                                     "lower {ctx_size} or use a smaller draft model") from None
        # Who may run native work on the context: the decode thread per step, others through
        # `_exclusive`. `_cond` guards the queues (its own lock, so callers never wait on a decode).
        self._native = threading.RLock()
        self._prep_lock = threading.Lock()
        self._cond = threading.Condition(threading.Lock())
        self._waiting: deque[_Request] = deque()
        self._running = 0  # requests taken by the decode thread and not finished
        self._paused = 0
        self._closed = False

    def _load_draft(self, path: str, mparams: Any) -> Any:
        """Check the draft model's vocabulary against the target's (both loaded vocabulary-only, so a
        mismatch is refused in a second, before any weights load), then load the draft model."""
        L = self._L
        check_draft_file(path)
        from pathlib import Path

        from ..gguf_meta import read_gguf

        info = read_gguf(Path(path), role="draft model")
        if info.architecture == ASSISTANT_ARCH:  # Gemma 4 multi-token prediction
            why = assistant_mismatch(self.pair.model, info)
            if why:
                raise ModelError(f"draft model {path}", f"cannot draft for this model: {why}",
                                 "use the assistant released with the model")
            self._mtp, missing = mtp_bindings(L)
            if self._mtp is None:
                raise ModelError(f"draft model {path}", "this llama-cpp-python cannot run a Gemma 4 assistant: "
                                 f"{missing}", "install llama-cpp-python 0.3.36 or later, or use {draft} ngram")
        vparams = L.llama_model_default_params()
        vparams.vocab_only = True
        target = L.llama_model_load_from_file(str(self.config.model).encode(), vparams)
        if not target:
            raise ModelError(f"model {self.config.model}", "llama.cpp could not read its vocabulary",
                             "run with -v to see llama.cpp's log")
        try:
            draft = L.llama_model_load_from_file(path.encode(), vparams)
            if not draft:
                raise ModelError(f"draft model {path}", "llama.cpp could not read its vocabulary",
                                 "run with -v to see llama.cpp's log")
            try:
                why = vocab_mismatch(L, L.llama_model_get_vocab(target), L.llama_model_get_vocab(draft))
            finally:
                L.llama_model_free(draft)
        finally:
            L.llama_model_free(target)
        if why:
            raise ModelError(f"draft model {path}", f"cannot draft for this model: {why}",
                             "a draft model needs the model's vocabulary")
        model = L.llama_model_load_from_file(path.encode(), mparams)
        if model and interrupt.requested():
            L.llama_model_free(model)
        interrupt.check()
        if not model:
            raise ModelError(f"draft model {path}", "llama.cpp could not load it (unsupported architecture "
                             "or corrupt)", "run with -v to see llama.cpp's log")
        return model

    # --- vocabulary helpers -------------------------------------------------------------------
    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        raw = self._L.llama_vocab_get_text(self._vocab, token)
        return raw.decode("utf-8", "replace") if raw else ""

    def _single_token(self, text: str) -> int | None:
        ids = self.tokenize(text, add_special=False, parse_special=True)
        if len(ids) == 1 and self._token_text(ids[0]) == text:
            return ids[0]
        return None

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode()
        n_max = len(data) + 16
        buf = (self._L.llama_token * n_max)()
        n = self._L.llama_tokenize(self._vocab, data, len(data), buf, n_max, add_special, parse_special)
        if n < 0:
            buf = (self._L.llama_token * -n)()
            n = self._L.llama_tokenize(self._vocab, data, len(data), buf, -n, add_special, parse_special)
        return list(buf[:n])

    def _piece(self, token: int, special: bool = False) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = self._L.llama_token_to_piece(self._vocab, token, buf, 64, 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._L.llama_token_to_piece(self._vocab, token, buf, -n, 0, special)
        return buf.raw[:n]

    # --- prompt preparation -------------------------------------------------------------------
    def _render(self, messages: Sequence[Message | CachedMessage],
                options: GenerateOptions) -> tuple[str, list[Image | Audio | Placeholder]]:
        media: list[Image | Audio | Placeholder] = []
        for msg in messages:
            for part in msg.parts:
                if not isinstance(part, Image | Audio | Placeholder):  # text, tool calls and results
                    continue
                kind = part.kind if isinstance(part, Placeholder) else "image" if isinstance(part, Image) else "audio"
                if kind == "image" and not self.supports[VISION]:
                    raise ModelError("projector", "this model has no vision encoder", "use a vision mmproj")
                if kind == "audio" and not self.supports[AUDIO]:
                    raise ModelError("projector", "this model has no audio encoder", "use an audio mmproj")
                media.append(part)
        text = render_prompt(messages, template=self.template, marker=self.marker, bos_text=self.bos_text,
                             add_generation_prompt=options.add_generation_prompt, enable_thinking=options.think,
                             tools=options.tools)
        return text, media

    def _bitmap(self, part: Image | Audio) -> Any:
        import numpy as np

        M = self._M
        if isinstance(part, Image):
            px = np.ascontiguousarray(part.pixels, dtype=np.uint8)
            if px.ndim != 3 or px.shape[2] != 3:
                raise GemmapipeError("image", f"expected HxWx3 RGB pixels, got shape {px.shape}")
            h, w = px.shape[:2]
            bmp = M.mtmd_bitmap_init(w, h, px.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)))
        else:
            samples = np.ascontiguousarray(part.samples, dtype=np.float32)
            bmp = M.mtmd_bitmap_init_from_audio(len(samples), samples.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
        if not bmp:
            raise GemmapipeError("media", "libmtmd could not create a bitmap")
        # The id is what mtmd reports back per chunk: a content hash lets us match cached media.
        M.mtmd_bitmap_set_id(bmp, _content_id(px if isinstance(part, Image) else samples).encode())
        return bmp

    def _prepare(self, messages: list[Message], options: GenerateOptions) -> _Prepared:
        L, M = self._L, self._M
        text, media = self._render(messages, options)
        if self._mtmd is None:
            tokens = self.tokenize(text, add_special=self.add_bos, parse_special=True)
            return _Prepared(None, [("text", *tokens)], ["text"], [len(tokens)], [], text)
        bitmaps = [self._bitmap(p) for p in media if not isinstance(p, Placeholder)]
        if len(bitmaps) != len(media):
            self._free_bitmaps(bitmaps)
            raise GemmapipeError("prompt", "a media placeholder outside a restored state")
        chunks = M.mtmd_input_chunks_init()
        inp = M.mtmd_input_text()
        data = text.encode()
        inp.text = data
        inp.text_len = len(data)
        inp.add_special = self.add_bos
        inp.parse_special = True
        arr = (M.mtmd_bitmap_p_ctypes * max(1, len(bitmaps)))(*bitmaps)
        rc = M.mtmd_tokenize(self._mtmd, chunks, ctypes.byref(inp), arr, len(bitmaps))
        if rc != 0:
            self._free_bitmaps(bitmaps)
            M.mtmd_input_chunks_free(chunks)
            why = {1: "the number of media markers and media differ", 2: "media preprocessing failed"}
            raise GemmapipeError("prompt", f"mtmd_tokenize failed: {why.get(rc, f'code {rc}')}")
        sigs: list[tuple[Any, ...]] = []
        kinds: list[str] = []
        counts: list[int] = []
        for i in range(M.mtmd_input_chunks_size(chunks)):
            chunk = M.mtmd_input_chunks_get(chunks, i)
            kind = M.mtmd_input_chunk_get_type(chunk)
            n = M.mtmd_input_chunk_get_n_tokens(chunk)
            if kind == CHUNK_TEXT:
                n_tok = ctypes.c_size_t(0)
                ptr = M.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n_tok))
                sigs.append(("text", *ptr[: n_tok.value]))
                kinds.append("text")
            else:
                cid = (M.mtmd_input_chunk_get_id(chunk) or b"").decode("ascii", "replace")
                sigs.append(("media", int(kind), cid, int(n)))
                kinds.append("image" if kind == CHUNK_IMAGE else "audio")
            counts.append(int(n))
        del L
        if self._foreign_wrappers:
            self._strip_wrappers(sigs, kinds, counts)
        return _Prepared(chunks, sigs, kinds, counts, bitmaps, text)

    def _strip_wrappers(self, sigs: list[tuple[Any, ...]], kinds: list[str], counts: list[int]) -> None:
        """mtmd tokenizes each wrapper on its own and appends it to the neighbouring text chunk, so it
        sits exactly at the end (begin marker) or start (end marker) of the text next to the media."""
        for i, kind in enumerate(kinds):
            if kind not in self._foreign_wrappers:
                continue
            beg, end = self._foreign_wrappers[kind]
            if i > 0 and kinds[i - 1] == "text" and beg and sigs[i - 1][-len(beg):] == beg:
                sigs[i - 1] = sigs[i - 1][: -len(beg)]
                counts[i - 1] -= len(beg)
            if i + 1 < len(kinds) and kinds[i + 1] == "text" and end and sigs[i + 1][1:1 + len(end)] == end:
                sigs[i + 1] = (sigs[i + 1][0], *sigs[i + 1][1 + len(end):])
                counts[i + 1] -= len(end)

    def _free_bitmaps(self, bitmaps: list[Any]) -> None:
        for b in bitmaps:
            self._M.mtmd_bitmap_free(b)

    def _release(self, prep: _Prepared) -> None:
        self._free_bitmaps(prep.bitmaps)
        if prep.chunks is not None:
            self._M.mtmd_input_chunks_free(prep.chunks)

    def encode_media(self, part: Image | Audio) -> np.ndarray:
        """The embeddings libmtmd makes of one image or audio part, (n_tokens, n_embd): exactly what the
        model is fed for it. For inspection and tests; generation never needs it."""
        import numpy as np

        M = self._M
        if self._mtmd is None:
            raise ModelError("projector", "no projector loaded")
        bmp = self._bitmap(part)
        chunks = M.mtmd_input_chunks_init()
        try:
            inp = M.mtmd_input_text()
            inp.text, inp.text_len = self.marker.encode(), len(self.marker.encode())
            inp.add_special, inp.parse_special = False, True
            arr = (M.mtmd_bitmap_p_ctypes * 1)(bmp)
            if M.mtmd_tokenize(self._mtmd, chunks, ctypes.byref(inp), arr, 1) != 0:
                raise GemmapipeError("media", "mtmd_tokenize failed")
            for i in range(M.mtmd_input_chunks_size(chunks)):
                chunk = M.mtmd_input_chunks_get(chunks, i)
                if M.mtmd_input_chunk_get_type(chunk) == CHUNK_TEXT:
                    continue
                n = M.mtmd_input_chunk_get_n_tokens(chunk)
                with self._exclusive():  # the encoder's output buffer is shared with the decode thread
                    if M.mtmd_encode_chunk(self._mtmd, chunk) != 0:
                        raise GemmapipeError("media", "mtmd_encode_chunk failed")
                    n_embd = self._L.llama_model_n_embd_inp(self._model)
                    ptr = M.mtmd_get_output_embd(self._mtmd)
                    return np.ctypeslib.as_array(ptr, shape=(n * n_embd,)).reshape(n, n_embd).copy()
            raise GemmapipeError("media", "no media chunk produced")
        finally:
            M.mtmd_input_chunks_free(chunks)
            M.mtmd_bitmap_free(bmp)

    def count_tokens(self, messages: list[Message], options: GenerateOptions) -> TokenCount:
        with self._prep_lock:
            prep = self._prepare(messages, options)
        try:
            return TokenCount(prep.total, list(zip(prep.kinds, prep.n_tokens, strict=True)))
        finally:
            self._release(prep)

    # --- evaluation (one sequence) ---------------------------------------------------------------
    def _reuse_prefix(self, slot: _Slot, sigs: list[tuple[Any, ...]]) -> int:
        """How many tokens at the start of the prompt are already in the slot's KV cache."""
        n_tokens = 0
        for old, new in zip(slot.cached, sigs, strict=False):
            if old == new:
                n_tokens += _sig_tokens(new)
                continue
            if old[0] == "text" and new[0] == "text":  # a text chunk may share a token prefix
                common = 0
                for a, b in zip(old[1:], new[1:], strict=False):
                    if a != b:
                        break
                    common += 1
                return n_tokens + common
            break
        return n_tokens

    def _trim_cache(self, slot: _Slot, keep: int) -> int:
        """Drop the slot's KV entries from position `keep` on; return how many positions truly remain."""
        L = self._L
        if keep >= slot.n_past:
            return slot.n_past
        ok = L.llama_memory_seq_rm(self._mem, slot.seq, keep, -1)
        # A sliding-window cache may already have dropped positions the new tail would attend to.
        pos_min = L.llama_memory_seq_pos_min(self._mem, slot.seq)
        window_ok = self.n_swa <= 0 or pos_min <= max(0, keep - self.n_swa)
        if not ok or (keep > 0 and not window_ok):
            L.llama_memory_seq_rm(self._mem, slot.seq, -1, -1)
            slot.cached, slot.n_past = [], 0
            return 0
        slot.n_past = keep
        return keep

    def _decode_tokens(self, tokens: list[int], pos: int, logits_last: bool, seq: int = 0) -> int:
        L = self._L
        batch = self._batch
        for start in range(0, len(tokens), self.n_batch):
            part = tokens[start : start + self.n_batch]
            batch.n_tokens = len(part)
            for i, tok in enumerate(part):
                batch.token[i] = tok
                batch.pos[i] = pos + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = seq
                batch.logits[i] = False
            last = start + len(part) >= len(tokens)
            batch.logits[len(part) - 1] = bool(logits_last and last)
            rc = L.llama_decode(self._ctx, batch)
            interrupt.check()  # an aborted decode (rc 2) after a signal is an interrupt, not a failure
            if rc != 0:
                raise GemmapipeError("decode", f"llama_decode failed (code {rc})",
                                     "the context may be full: raise {ctx_size}")
            pos += len(part)
        return pos

    def _evaluate(self, slot: _Slot, prep: _Prepared, stats: EngineStats, *, logits: bool = True) -> None:
        """Bring the slot's KV cache to exactly `prep`, evaluating what it does not hold yet; `logits`:
        ask for the last position's logits (to sample from), as a prompt needs and a prefill does not."""
        M = self._M
        seq = slot.seq
        slot.prefix_sha = None
        keep_tokens = self._reuse_prefix(slot, prep.sigs)
        if logits and keep_tokens >= prep.total:  # identical prompt: re-evaluate the last token for logits
            keep_tokens = prep.total - 1
        keep_tokens = _media_boundary(prep, keep_tokens)
        actual = self._trim_cache(slot, keep_tokens)
        if actual != keep_tokens:
            keep_tokens = 0
        slot.cached = []  # unknown until the evaluation below completes
        n_past = keep_tokens
        evaluated = 0
        pos_in_chunks = 0
        # stripped wrappers can empty a chunk
        last_index = max((i for i, n in enumerate(prep.n_tokens) if n > 0), default=-1) if logits else -1
        for i, sig in enumerate(prep.sigs):
            n = prep.n_tokens[i]
            chunk_start = pos_in_chunks
            pos_in_chunks += n
            if pos_in_chunks <= keep_tokens:
                continue
            last = i == last_index
            if sig[0] == "text":
                skip = max(0, keep_tokens - chunk_start)
                toks = list(sig[1 + skip :])
                n_past = self._decode_tokens(toks, n_past, logits_last=last, seq=seq)
                evaluated += len(toks)
            elif last:
                n_past = self._eval_media_with_logits(M.mtmd_input_chunks_get(prep.chunks, i), n_past, n, seq)
                evaluated += n
            else:
                new_n_past = self._L.llama_pos(0)
                chunk = M.mtmd_input_chunks_get(prep.chunks, i)
                rc = M.mtmd_helper_eval_chunk_single(self._mtmd, self._ctx, chunk, n_past, seq, self.n_batch, last,
                                                     ctypes.byref(new_n_past))
                interrupt.check()
                if rc != 0:
                    raise GemmapipeError("media", f"evaluating a {prep.kinds[i]} chunk failed (code {rc})")
                n_past = new_n_past.value
                evaluated += n
        slot.n_past = n_past
        slot.cached = list(prep.sigs)
        stats.prompt_tokens = prep.total
        stats.prompt_evaluated = evaluated
        with self._totals_lock:
            self._totals.total_prompt_evaluated += evaluated

    def _eval_media_with_logits(self, chunk: Any, n_past: int, n_tokens: int, seq: int = 0) -> int:
        """A prompt that ends on media (plain completion of audio, say) needs logits at its last
        embedding, which mtmd's helper never requests: encode the chunk and decode it ourselves."""
        L, M = self._L, self._M
        if M.mtmd_encode_chunk(self._mtmd, chunk) != 0:
            raise GemmapipeError("media", "encoding the last media chunk failed")
        embd = M.mtmd_get_output_embd(self._mtmd)
        n_embd = L.llama_model_n_embd_inp(self._model)
        batch = L.llama_batch_init(n_tokens, n_embd, 1)
        non_causal = bool(M.mtmd_decode_use_non_causal(self._mtmd, chunk))
        try:
            ctypes.memmove(batch.embd, embd, n_tokens * n_embd * ctypes.sizeof(ctypes.c_float))
            for i in range(n_tokens):
                batch.pos[i] = n_past + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = seq
                batch.logits[i] = i == n_tokens - 1
            batch.n_tokens = n_tokens
            if non_causal:
                L.llama_set_causal_attn(self._ctx, False)
            rc = L.llama_decode(self._ctx, batch)
            interrupt.check()
        finally:
            if non_causal:
                L.llama_set_causal_attn(self._ctx, True)
            L.llama_batch_free(batch)
        if rc != 0:
            raise GemmapipeError("decode", f"llama_decode failed on media embeddings (code {rc})")
        return n_past + n_tokens

    # --- sampling -------------------------------------------------------------------------------
    def _sampler(self, options: GenerateOptions) -> Any:
        L = self._L
        chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        if options.grammar:
            g = L.llama_sampler_init_grammar(self._vocab, options.grammar.encode(), b"root")
            if not g:
                L.llama_sampler_free(chain)
                raise GemmapipeError("schema", "llama.cpp rejected the grammar built from it")
            L.llama_sampler_chain_add(chain, g)
        elif options.tools and options.tool_choice != "none":
            # Free text until the model starts a call, the calls' syntax from there on; a required
            # call is forced from the first token (one call, then the end of the answer).
            forced = options.tool_choice == "required"
            text = gemma4.grammar(options.tools, thought=options.think and forced, parallel=not forced)
            g = (L.llama_sampler_init_grammar(self._vocab, text.encode(), b"root") if forced
                 else gemma4.lazy_grammar_sampler(L, self._vocab, text, self._single_token(gemma4.CALL_OPEN)))
            if not g:
                L.llama_sampler_free(chain)
                raise GemmapipeError("tools", "llama.cpp rejected the grammar of the tool calls")
            L.llama_sampler_chain_add(chain, g)
        if self._suppress:
            biases = (L.llama_logit_bias * len(self._suppress))()
            for i, tok in enumerate(self._suppress):
                biases[i].token = tok
                biases[i].bias = float("-inf")
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_logit_bias(self.n_vocab, len(self._suppress), biases))
        if options.repeat_penalty != 1.0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_penalties(options.repeat_last_n,
                                                                             options.repeat_penalty, 0.0, 0.0))
        if options.temperature <= 0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())
        else:
            if options.top_k > 0:
                L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_k(options.top_k))
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_p(options.top_p, 1))
            if options.min_p > 0:
                L.llama_sampler_chain_add(chain, L.llama_sampler_init_min_p(options.min_p, 1))
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_temp(options.temperature))
            seed = options.seed if options.seed is not None else 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: random
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        return chain

    def _greedy_only(self, options: GenerateOptions) -> bool:
        """The chain `_sampler` builds for these options is the suppression bias and argmax, nothing
        that keeps state or looks at the history: `_sample` may then pick the token itself."""
        return (options.temperature <= 0 and not options.grammar and options.repeat_penalty == 1.0
                and not (options.tools and options.tool_choice != "none"))

    def _sample(self, req: _Request, row: int) -> int:
        """The request's next token from the logits of batch row `row` (-1: the last with logits).
        A greedy request is answered by an argmax over llama.cpp's logits buffer (numpy, ~10 us for a
        262K vocabulary) instead of `llama_sampler_sample`, which first copies every logit into a
        candidate array (~0.2 ms a token, 2% of a 270M decode step here). The same token: both take
        the first of equal maxima, with the suppressed tokens at -inf."""
        L = self._L
        if not req.greedy:
            return int(L.llama_sampler_sample(req.chain, self._ctx, row))
        ptr = L.llama_get_logits_ith(self._ctx, row)
        if not ptr:
            return int(L.llama_sampler_sample(req.chain, self._ctx, row))
        logits = self._np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))
        tok = int(logits.argmax())
        if tok in self._suppress_set:
            masked = logits.copy()
            masked[self._suppress] = -self._np.inf
            tok = int(masked.argmax())
        return tok

    # --- requests ---------------------------------------------------------------------------------
    def generate(self, messages: list[Message], options: GenerateOptions) -> Iterator[str]:
        with self._prep_lock:  # mtmd preprocessing of one request at a time; decoding goes on meanwhile
            prep = self._prepare(messages, options)
        stream = self._submit(prep, options)
        # Gemma 4's calls come as text (<|tool_call>...<tool_call|>): parsed out, never shown.
        return gemma4.split_calls(stream, options.on_tool_call) if options.tools else stream

    def prefill(self, messages: list[Message], options: GenerateOptions) -> int | None:
        """Evaluate the part of this prompt that any other question about the same media shares:
        everything up to its last media and the tokens that close that media, nothing after. Then
        `save_state` holds what `generate_cached` can resume from. Returns how many tokens the KV
        cache holds; None, with nothing evaluated, when the prompt has no media or its text after the
        last media does not tokenize on its own. (Sequence 0; waits until no request runs.)"""
        with self._prep_lock:
            prep = self._prepare(messages, options)
        try:
            media = [i for i, k in enumerate(prep.kinds) if k != "text"]
            cut = _after_last_marker(prep.text, self.marker, len(media))
            if not media or cut is None:
                return None
            last = media[-1]
            tail = self.tokenize(prep.text[cut:], add_special=False, parse_special=True)
            after = list(prep.sigs[last + 1][1:]) if last + 1 < len(prep.sigs) else []
            if len(tail) > len(after) or after[len(after) - len(tail):] != tail:
                return None  # the question's tokens run into the media's closing ones: nothing to share
            lead = after[: len(after) - len(tail)]  # the media's closing tokens
            sigs = [*prep.sigs[: last + 1], *([("text", *lead)] if lead else [])]
            counts = [*prep.n_tokens[: last + 1], *([len(lead)] if lead else [])]
            shared = _Prepared(prep.chunks, sigs, prep.kinds[: len(sigs)], counts, [], prep.text[:cut])
            if shared.total + 1 > self.n_ctx:
                raise ContextOverflow("prompt", shared.total + 1, self.n_ctx)
            stats = self._own_stats()
            t0 = time.perf_counter()
            with self._exclusive():
                slot = self._slots[0]
                try:
                    self._evaluate(slot, shared, stats, logits=False)
                except KeyboardInterrupt:
                    self._clear_slot(slot)
                    raise
                stats.prefill_s = time.perf_counter() - t0
                slot.prefix_sha = _sha(shared.text)
                return slot.n_past
        finally:
            self._release(prep)

    def generate_cached(self, messages: list[CachedMessage], options: GenerateOptions) -> Iterator[str] | None:
        """`generate` for a prompt whose media are all in a state restored by `load_state` (saved
        after `prefill`): the media are placeholders, and only the text after the last one is
        evaluated. None, with nothing evaluated, unless the prompt up to its last placeholder is
        exactly the one prefilled (same text, same kinds of media in the same places)."""
        text, media = self._render(messages, options)
        cut = _after_last_marker(text, self.marker, len(media))
        with self._exclusive():
            slot = self._slots[0]
            held = [("image" if s[1] == CHUNK_IMAGE else "audio") for s in slot.cached if s[0] == "media"]
            if (cut is None or not media or slot.prefix_sha is None or _sha(text[:cut]) != slot.prefix_sha
                    or [getattr(p, "kind", None) for p in media] != held):
                return None
            tail = self.tokenize(text[cut:], add_special=False, parse_special=True)
            if not tail:
                return None  # a prompt ending on its media needs the media's logits, which a state lacks
            sigs = list(slot.cached)
            if sigs and sigs[-1][0] == "text":  # the media's closing tokens: one text chunk with the tail
                sigs[-1] = (*sigs[-1], *tail)
            else:
                sigs.append(("text", *tail))
            prep = _Prepared(None, sigs, ["text" if s[0] == "text" else "media" for s in sigs],
                             [_sig_tokens(s) for s in sigs], [], text)
            if self._reuse_prefix(slot, sigs) < slot.n_past:
                return None
            return self._submit(prep, options, pin=slot)

    def _own_stats(self) -> EngineStats:
        """A new stats object for a request of the calling thread (what `stats` shows it afterwards)."""
        stats = EngineStats()
        self._local.stats = stats
        return stats

    def _submit(self, prep: _Prepared, options: GenerateOptions, pin: _Slot | None = None) -> Iterator[str]:
        """Queue one request (or, with one sequence, prefill it now); its text comes from the iterator."""
        try:
            if prep.total == 0:
                raise GemmapipeError("prompt", "is empty", "give some text or an attachment")
            need = prep.total + max(1, options.max_tokens)
            if need > self.n_ctx:
                raise ContextOverflow("prompt", need, self.n_ctx)
        except BaseException:
            self._release(prep)
            raise
        req = _Request(prep, options, self._own_stats(), pin)
        if self._n_seq == 1:
            try:  # in the caller's thread and now, so that a failing prompt raises here
                self._admit(req, self._slots[0])
            except BaseException as exc:
                self._finish(req, "error", error=exc)
                raise
            return self._stream_inline(req)
        with self._cond:
            if self._closed:
                self._release(prep)
                raise GemmapipeError("engine", "is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._schedule, name="gemmapipe-decode", daemon=True)
                self._thread.start()
            self._waiting.append(req)
            self._cond.notify_all()
        return self._stream_queued(req)

    def _stream_inline(self, req: _Request) -> Iterator[str]:
        """One sequence: the caller's thread drives the decode steps itself."""
        try:
            while True:
                while not req.out:
                    if req.finished:
                        return
                    self._step([req])
                yield req.out.popleft()
        except KeyboardInterrupt as exc:
            if not req.finished:  # stopped between two steps: what was evaluated is consistent, keep it
                self._finish(req, "interrupted", error=exc)
            raise
        except BaseException as exc:
            if not req.finished:
                self._finish(req, "error", error=exc)
            raise
        finally:
            if not req.finished:  # the reader stopped early (closed the generator)
                self._finish(req, "cancelled")

    def _stream_queued(self, req: _Request) -> Iterator[str]:
        """Several sequences: the decode thread fills the request's queue; this thread reads it."""
        try:
            while True:
                with self._cond:
                    while not req.out and not req.finished:
                        self._cond.wait(0.5)  # a timeout keeps Ctrl-C responsive in the main thread
                    item = req.out.popleft() if req.out else None
                if item is not None:
                    yield item
                    continue
                if req.error is not None:
                    raise req.error
                return
        finally:
            if not req.finished:
                req.cancelled = True  # the decode thread drops it at its next step

    # --- the decode thread (several sequences) ----------------------------------------------------
    def _schedule(self) -> None:
        """Owns the llama context while requests run: admits waiting requests into free sequences
        (prefill, one at a time), then decodes one token (plus drafts) of every active sequence per
        `llama_decode`. A finished request frees its sequence for the next one at once."""
        active: list[_Request] = []
        while True:
            with self._cond:
                while not self._closed and (self._paused or not (self._waiting or active)):
                    self._cond.wait()
                if self._closed:
                    doomed = [*active, *self._waiting]
                    self._waiting.clear()
                    break
                admit: list[tuple[_Request, _Slot]] = []
                free = [s for s in self._slots if not s.busy]
                for req in list(self._waiting):
                    if not free:
                        break
                    slot = self._choose_slot(req, free)
                    if slot is None:
                        continue
                    free.remove(slot)
                    slot.busy = True
                    self._waiting.remove(req)
                    admit.append((req, slot))
                self._running += len(admit)
            with self._native:
                for req, slot in admit:
                    if req.cancelled:
                        self._finish(req, "cancelled", slot=slot)
                        continue
                    try:
                        self._admit(req, slot)
                    except BaseException as exc:  # this request fails; the others go on
                        self._finish(req, "error", error=exc, slot=slot)
                        continue
                    if not req.finished:
                        active.append(req)
                for req in active:
                    if req.cancelled and not req.finished:
                        self._finish(req, "cancelled")
                active = [r for r in active if not r.finished]
                if not active:
                    continue
                try:
                    self._step(active)
                except BaseException as exc:  # a failed decode (or a signal) fails every request in it
                    reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else "error"
                    for req in active:
                        if not req.finished:
                            self._finish(req, reason, error=exc)
                active = [r for r in active if not r.finished]
        for req in doomed:
            req.error = GemmapipeError("engine", "was closed before the answer was complete")
            req.finished = True
        with self._cond:
            self._cond.notify_all()

    def _choose_slot(self, req: _Request, free: list[_Slot]) -> _Slot | None:
        """The free sequence that already holds the longest prefix of this prompt (its own prefix
        cache: a batch with a shared prompt evaluates it once per sequence, then reuses it)."""
        if req.pin is not None:
            return req.pin if req.pin in free else None
        return max(free, key=lambda s: (self._reuse_prefix(s, req.prep.sigs), -s.last_used))

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """The llama context for the calling thread alone: with several sequences, no request runs
        meanwhile (state save/restore and prefill work on sequence 0)."""
        if self._thread is None:
            with self._native:
                yield
            return
        with self._cond:
            self._paused += 1
            while self._running:
                self._cond.wait(0.5)
        try:
            with self._native:
                yield
        finally:
            with self._cond:
                self._paused -= 1
                self._cond.notify_all()

    # --- decoding ---------------------------------------------------------------------------------
    def _admit(self, req: _Request, slot: _Slot) -> None:
        """Prefill the request into `slot` and sample its first token from the prompt's logits."""
        L = self._L
        req.slot = slot
        slot.busy = True
        try:
            t0 = time.perf_counter()
            interrupt.stage("prefill")
            L.llama_set_abort_callback(self._ctx, self._abort, None)
            try:
                self._evaluate(slot, req.prep, req.stats)
            except KeyboardInterrupt:
                self._clear_slot(slot)  # a prefill stopped midway leaves the KV cache unknown
                raise
            finally:
                L.llama_set_abort_callback(self._ctx, self._no_abort, None)
            req.stats.prefill_s = time.perf_counter() - t0
            if self._draft == "ngram":
                req.ngram = NgramDraft(_history(req.prep.sigs))
            elif isinstance(self._drafter, ModelDraft):  # it reads the prompt's text, not its media
                req.draft_prompt = [t for t in _history(req.prep.sigs) if t != SEPARATOR]
            req.chain = self._sampler(req.options)
            req.greedy = self._greedy_only(req.options)
        finally:
            self._release(req.prep)
        req.t0 = time.perf_counter()
        interrupt.stage("decode")
        if slot.n_past >= self.n_ctx:
            self._finish(req, "context")
            return
        tok = self._sample(req, -1)
        if self._take(req, tok):
            req.pending = tok
            if isinstance(self._drafter, MtpDraft):
                req.mtp_h = self._drafter.hidden(-1)

    def _take(self, req: _Request, tok: int) -> bool:
        """Hand out one sampled token; False once the request is finished (end of turn, length)."""
        if self._L.llama_vocab_is_eog(self._vocab, tok) or tok in self._stop_ids:
            self._finish(req, "eog")
            return False
        req.stats.generated += 1
        if req.ngram is not None:
            req.ngram.push(tok)
        if tok == self._thought_open:
            req.in_thought = True
        elif tok == self._thought_close:
            req.in_thought = False
        elif req.in_thought:
            text = req.thought.decode(self._piece(tok))
            if text and req.options.on_thought:
                req.options.on_thought(text)
        else:
            text = req.decoder.decode(self._piece(tok))
            if text:
                self._emit(req, text)
        if req.stats.generated >= req.options.max_tokens:
            self._finish(req, "length")
            return False
        return True

    def _emit(self, req: _Request, text: str) -> None:
        if self._thread is None:
            req.out.append(text)
            return
        with self._cond:
            req.out.append(text)
            self._cond.notify_all()

    def _step(self, reqs: list[_Request]) -> None:
        """One `llama_decode` for every active request: its pending token and any drafted tokens,
        each row with logits; then each position is sampled with the request's own chain, drafted
        tokens kept while they equal what was sampled, and the KV rows after the first mismatch
        removed. With no draft this is exactly one token per request and step."""
        L = self._L
        batch = self._batch
        plan: list[tuple[_Request, int, list[int]]] = []
        rows = 0
        proposed = self._propose(reqs) if self._drafter is not None else {}
        for req in reqs:
            slot = req.slot
            assert slot is not None and req.pending is not None
            draft: list[int] = []
            if proposed:
                draft = proposed.get(slot.seq, [])[: max(0, self.n_batch - rows - 1)]
            elif req.ngram is not None:
                room = min(self._draft_max, req.options.max_tokens - req.stats.generated - 1,
                           self.n_ctx - slot.n_past - 1, self.n_batch - rows - 1)
                draft = req.ngram.propose(room)
            plan.append((req, rows, draft))
            for j, tok in enumerate([req.pending, *draft]):
                batch.token[rows] = tok
                batch.pos[rows] = slot.n_past + j
                batch.n_seq_id[rows] = 1
                batch.seq_id[rows][0] = slot.seq
                batch.logits[rows] = True
                rows += 1
        batch.n_tokens = rows
        rc = L.llama_decode(self._ctx, batch)
        if interrupt.requested():  # a decode is short: a signal is answered after it
            for req, _, _ in plan:  # this step's rows never reached the bookkeeping: take them back out
                if req.slot is not None:
                    L.llama_memory_seq_rm(self._mem, req.slot.seq, req.slot.n_past, -1)
            raise KeyboardInterrupt
        if rc != 0:
            raise GemmapipeError("decode", f"llama_decode failed (code {rc})",
                                 "the context may be full: raise {ctx_size}")
        for req, start, draft in plan:
            slot = req.slot
            assert slot is not None and req.pending is not None
            end = slot.n_past + 1 + len(draft)  # positions written by this step
            slot.n_past += 1
            req.generated.append(req.pending)
            req.pending = None
            req.stats.drafted += len(draft)
            for j in range(len(draft) + 1):
                if slot.n_past >= self.n_ctx:
                    self._finish(req, "context")
                    break
                tok = self._sample(req, start + j)
                if j < len(draft) and tok == draft[j]:
                    req.stats.accepted += 1
                    if not self._take(req, tok):
                        break
                    slot.n_past += 1  # the drafted row holds exactly this token: keep it
                    req.generated.append(tok)
                    continue
                if self._take(req, tok):
                    req.pending = tok
                    if isinstance(self._drafter, MtpDraft):
                        req.mtp_h = self._drafter.hidden(start + j)
                break
            if slot.n_past < end:  # drafted rows past the first mismatch
                L.llama_memory_seq_rm(self._mem, slot.seq, slot.n_past, -1)

    def _propose(self, reqs: list[_Request]) -> dict[int, list[int]]:
        """The draft model's proposals for each request's next tokens, by sequence id."""
        assert self._drafter is not None
        if isinstance(self._drafter, MtpDraft):
            mtp: list[tuple[int, int, int, Any, int]] = []
            for req in reqs:
                slot = req.slot
                if slot is None or req.pending is None or req.mtp_h is None:
                    continue
                room = min(self._draft_max, req.options.max_tokens - req.stats.generated - 1,
                           self.n_ctx - slot.n_past - 1)
                mtp.append((slot.seq, req.pending, slot.n_past, req.mtp_h, room))
            return self._drafter.propose(mtp) if mtp else {}
        wants: list[tuple[int, list[int], int]] = []
        for req in reqs:
            slot = req.slot
            if req.draft_prompt is None or slot is None or req.pending is None:
                continue
            room = min(self._draft_max, req.options.max_tokens - req.stats.generated - 1, self.n_ctx - slot.n_past - 1)
            if room > 0:
                wants.append((slot.seq, [*req.draft_prompt, *req.generated, req.pending], room))
        return self._drafter.propose(wants) if wants else {}

    def _finish(self, req: _Request, reason: str, *, error: BaseException | None = None,
                slot: _Slot | None = None) -> None:
        """End a request: flush its text, free its sampler, fold what it evaluated into its sequence's
        cache bookkeeping (or forget the sequence's cache after a failure) and free the sequence."""
        if req.finished:
            return
        slot = slot or req.slot
        stats = req.stats
        if reason != "error":
            stats.stop_reason = reason
        tail = req.decoder.decode(b"", final=True)
        if req.chain is not None:
            self._L.llama_sampler_free(req.chain)
            req.chain = None
        if req.t0:
            stats.decode_s = time.perf_counter() - req.t0
        if slot is not None:
            if reason == "error":
                self._clear_slot(slot)  # a failed decode leaves the sequence's KV rows unknown
            else:
                self._merge_generated(slot, req.generated)
            slot.busy = False
            self._uses += 1
            slot.last_used = self._uses
        with self._totals_lock:
            t = self._totals
            t.total_generated += stats.generated
            t.total_drafted += stats.drafted
            t.total_accepted += stats.accepted
            t.total_prompt_tokens += stats.prompt_tokens
            t.total_prefill_s += stats.prefill_s
            t.total_decode_s += stats.decode_s
        self._fill_totals(stats)
        with self._cond:
            if tail and error is None:
                req.out.append(tail)
            req.error = error
            req.finished = True
            if self._thread is not None and slot is not None:
                self._running -= 1
            self._cond.notify_all()

    def _merge_generated(self, slot: _Slot, generated: list[int]) -> None:
        """Fold the evaluated generated tokens into the last cache signature, so a follow-up turn that
        renders the same answer back as text can reuse it (the template re-tokenizes it as one run)."""
        if generated:
            if slot.cached and slot.cached[-1][0] == "text":
                slot.cached[-1] = (*slot.cached[-1], *generated)
            else:
                slot.cached.append(("text", *generated))

    # --- state ----------------------------------------------------------------------------------
    @property
    def stats(self) -> EngineStats:
        """The last request of the calling thread, with the engine's totals."""
        stats = getattr(self._local, "stats", None)
        if stats is None:
            stats = self._local.stats = EngineStats()
        self._fill_totals(stats)
        return stats

    def _fill_totals(self, stats: EngineStats) -> None:
        with self._totals_lock:
            t = self._totals
            stats.total_prompt_evaluated, stats.total_generated = t.total_prompt_evaluated, t.total_generated
            stats.total_drafted, stats.total_accepted = t.total_drafted, t.total_accepted
            stats.total_prompt_tokens, stats.total_prefill_s = t.total_prompt_tokens, t.total_prefill_s
            stats.total_decode_s = t.total_decode_s

    def _clear_slot(self, slot: _Slot) -> None:
        self._L.llama_memory_seq_rm(self._mem, slot.seq, -1, -1)
        slot.cached, slot.n_past, slot.prefix_sha = [], 0, None

    def reset(self) -> None:
        with self._exclusive():
            self._L.llama_memory_clear(self._mem, True)
            for slot in self._slots:
                slot.cached, slot.n_past, slot.prefix_sha = [], 0, None

    def save_state(self) -> EngineState:
        """The KV cache of sequence 0 (llama.cpp's bytes) plus our bookkeeping, as plain data."""
        L = self._L
        with self._exclusive():
            slot = self._slots[0]
            size = L.llama_state_seq_get_size(self._ctx, slot.seq)
            data = bytearray(size)
            n = L.llama_state_seq_get_data(self._ctx, (ctypes.c_uint8 * size).from_buffer(data), size, slot.seq)
            info = {"n_past": slot.n_past, "chunks": [list(s) for s in slot.cached], "prefix_sha256": slot.prefix_sha}
        return EngineState(memoryview(data)[:n], info)

    def load_state(self, state: EngineState) -> None:
        """Restore a state saved by `save_state` (of this model and setup); StateError, with the KV
        cache left empty, when it does not fit."""
        sigs, n_past, prefix = self._read_state_info(state.info)
        kv = state.kv
        if len(kv) == 0:
            raise StateError("the saved state is empty")
        if kv.readonly:
            buf: Any = (ctypes.c_uint8 * len(kv)).from_buffer_copy(kv)
        else:
            buf = (ctypes.c_uint8 * len(kv)).from_buffer(kv)
        L = self._L
        with self._exclusive():
            slot = self._slots[0]
            self._clear_slot(slot)
            if L.llama_state_seq_set_data(self._ctx, buf, len(kv), slot.seq) == 0:
                self._clear_slot(slot)
                raise StateError("llama.cpp refused the saved state (another model, setup or llama.cpp version)")
            if L.llama_memory_seq_pos_max(self._mem, slot.seq) + 1 != n_past:
                self._clear_slot(slot)
                raise StateError("the saved state holds another number of positions than its bookkeeping says")
            slot.cached, slot.n_past, slot.prefix_sha = sigs, n_past, prefix

    def _read_state_info(self, info: Any) -> tuple[list[tuple[Any, ...]], int, str | None]:
        """The bookkeeping of a saved state, checked for shape (it comes from disk)."""
        if not isinstance(info, dict):
            raise StateError("the saved state's bookkeeping is not a mapping")
        for name in ("n_past", "chunks", "prefix_sha256"):
            if name not in info:
                raise StateError(f"the saved state's bookkeeping lacks {name!r}")
        n_past, chunks, prefix = info["n_past"], info["chunks"], info["prefix_sha256"]
        if not _is_int(n_past) or not 0 < n_past <= self.n_ctx:
            raise StateError("the saved state's 'n_past' is not a position in this context")
        if prefix is not None and not isinstance(prefix, str):
            raise StateError("the saved state's 'prefix_sha256' has the wrong type")
        if not isinstance(chunks, list):
            raise StateError("the saved state's 'chunks' has the wrong type")
        sigs: list[tuple[Any, ...]] = []
        for c in chunks:
            if not (_is_text_sig(c) or _is_media_sig(c)):
                raise StateError("the saved state's 'chunks' has an entry of the wrong shape")
            sigs.append(tuple(c))
        if sum(_sig_tokens(s) for s in sigs) != n_past:
            raise StateError("the saved state's chunks do not add up to its 'n_past'")
        return sigs, n_past, prefix

    def state_setup(self) -> dict[str, Any]:
        """What a saved state depends on besides the prompt: files (LoRA adapters and their scales
        included), context and KV-cache layout: with N sequences the cache has N streams, and
        llama.cpp refuses a sequence's state saved with another stream count (the key is absent for
        one stream)."""
        from ..lora import state_key
        from ..statecache import file_identity

        c = self.config
        return {"model": file_identity(c.model), "mmproj": file_identity(self.pair.mmproj.path if self.pair.mmproj
                                                                         else None),
                "n_ctx": self.n_ctx, **({"n_stream": self._n_seq} if self._n_seq > 1 else {}),
                "cache_type": c.cache_type, "flash_attn": c.flash_attn, "swa_full": c.swa_full,
                "no_template": c.no_template, "image_tokens": [c.image_min_tokens, c.image_max_tokens],
                "llama_cpp": _llama_cpp_version(), **state_key(c.lora)}

    @property
    def templated(self) -> bool:
        return bool(self.template)

    def describe(self) -> EngineInfo:
        return EngineInfo(model=str(self.config.model),
                          mmproj=str(self.pair.mmproj.path) if self.pair.mmproj else None,
                          architecture=self.pair.model.architecture, n_ctx=self.n_ctx, n_batch=self.n_batch,
                          threads=self.threads)

    def close(self) -> None:
        L, M = self._L, self._M
        if getattr(self, "_thread", None) is not None:
            with self._cond:
                self._closed = True
                self._cond.notify_all()
            assert self._thread is not None
            self._thread.join()
            self._thread = None
        if getattr(self, "_batch", None) is not None:
            L.llama_batch_free(self._batch)
            self._batch = None
        if self._mtmd:
            M.mtmd_free(self._mtmd)
            self._mtmd = None
        if getattr(self, "_drafter", None) is not None:
            assert self._drafter is not None
            self._drafter.close()
            self._drafter = None
        if getattr(self, "_draft_model", None):
            L.llama_model_free(self._draft_model)
            self._draft_model = None
        if self._ctx:
            L.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_adapters", None):
            from ..lora import free_adapters

            free_adapters(L, self._adapters)
        if self._model:
            L.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> LocalEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _llama_cpp_version() -> str:
    """The installed llama-cpp-python's version (its package's __version__ is not read: the package
    is registered without running its __init__, see native.bindings)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama_cpp_python")
    except PackageNotFoundError:
        return ""


@interrupt.native_callback
def _load_progress(progress: float, user_data: Any) -> bool:
    return not interrupt.requested()  # False aborts the load


@interrupt.native_callback
def _abort_requested(user_data: Any) -> bool:
    return interrupt.requested()


def _media_boundary(prep: _Prepared, keep: int) -> int:
    """A media chunk is evaluated whole: never keep a cache cut that falls inside one."""
    start = 0
    for kind, n in zip(prep.kinds, prep.n_tokens, strict=True):
        if start < keep < start + n and kind != "text":
            return start
        start += n
    return keep


def _history(sigs: list[tuple[Any, ...]]) -> list[int]:
    """The prompt's tokens for n-gram lookup; each media chunk one separator."""
    out: list[int] = []
    for sig in sigs:
        if sig[0] == "text":
            out.extend(sig[1:])
        else:
            out.append(SEPARATOR)
    return out


def _sig_tokens(sig: tuple[Any, ...]) -> int:
    return int(sig[3]) if sig[0] == "media" else len(sig) - 1


def _after_last_marker(text: str, marker: str, n_media: int) -> int | None:
    """Where the text after the last of `n_media` media markers begins; None when the text holds
    another number of markers (a marker typed in the question, say)."""
    if n_media == 0 or text.count(marker) != n_media:
        return None
    return text.rindex(marker) + len(marker)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_text_sig(c: Any) -> bool:
    return isinstance(c, list) and bool(c) and c[0] == "text" and all(_is_int(t) for t in c[1:])


def _is_media_sig(c: Any) -> bool:
    return (isinstance(c, list) and len(c) == 4 and c[0] == "media" and c[1] in (CHUNK_IMAGE, CHUNK_AUDIO)
            and isinstance(c[2], str) and _is_int(c[3]) and c[3] > 0)


def _content_id(arr: np.ndarray) -> str:
    import numpy as np

    h = hashlib.sha256()
    h.update(str(arr.shape).encode())
    h.update(np.ascontiguousarray(arr).data)
    return h.hexdigest()[:32]


__all__ = ["LocalEngine", "Text", "default_threads"]
