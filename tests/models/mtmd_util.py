"""Thin ctypes helpers over ``llama_cpp`` / ``llama_cpp.mtmd_cpp`` (llama-cpp-python 0.3.36) for tests.

These mirror what an engine has to do when it drives libmtmd itself:

* :func:`silence_native_logs` routes llama.cpp and mtmd logging to a no-op callback (the callback
  objects are kept alive at module level; a garbage-collected ctypes callback crashes the process).
* :class:`Mtmd` owns an ``mtmd_context``; :meth:`Mtmd.tokenize` turns a prompt with
  ``mtmd_default_marker()`` placeholders plus numpy images / waveforms into chunks;
  :meth:`Mtmd.encode` runs the projector on one media chunk and copies ``mtmd_get_output_embd``
  (``n_tokens x n_embd`` floats) into numpy; :meth:`Mtmd.eval_chunk` is
  ``mtmd_helper_eval_chunk_single``.
* :func:`decode_tokens` / :func:`decode_embeddings` feed a llama context with the ``llama_batch_ext``
  API (the one mtmd's helper uses), asking for logits of the last entry, and :func:`greedy` continues.

Things that abort the whole process instead of returning an error (measured on 0.3.36):

* a gemma4uv image chunk evaluated with the helper's ``n_batch`` argument larger than the context's
  ``n_ubatch`` while the image has more tokens than ``n_ubatch``:
  ``GGML_ASSERT(... "non-causal attention requires n_ubatch >= n_tokens")`` in llama-context.cpp.
  (With helper ``n_batch <= n_ubatch`` it does not crash but silently splits the image into
  separately-bidirectional slices.) Keep n_batch = n_ubatch >= the largest image.
* an audio bitmap of 1 sample: ``GGML_ASSERT(buf.size() > sizeof(float))`` in mtmd.cpp.
* on the development VM, any quantized text model without ``use_extra_bufts = False`` (see
  :func:`load_llama`).

Also: ``mtmd_tokenize`` returns 2 (not 1) when there are more markers than bitmaps (the C++
tokenizer throws and the C wrapper maps it to 2); ``mtmd_helper_eval_chunk_single`` requests NO
logits for media chunks, so if the prompt ends on a media chunk the engine must decode something
after it (or decode the embeddings itself, as :func:`decode_embeddings` does) before sampling.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CHUNK_TEXT, CHUNK_IMAGE, CHUNK_AUDIO = 0, 1, 2

_LOG_CALLBACKS: list[object] = []


def silence_native_logs() -> None:
    """Send llama.cpp's and libmtmd's log output to a no-op callback (idempotent)."""
    if _LOG_CALLBACKS:
        return
    import llama_cpp
    import llama_cpp.mtmd_cpp as mtmd

    @llama_cpp.llama_log_callback
    def _noop(level, text, user_data):  # type: ignore[no-untyped-def]
        return None

    _LOG_CALLBACKS.append(_noop)
    llama_cpp.llama_log_set(_noop, ctypes.c_void_p(0))
    mtmd.mtmd_helper_log_set(_noop, ctypes.c_void_p(0))


def load_llama(model_path: Path | str, **kwargs: object):  # type: ignore[no-untyped-def]
    """``llama_cpp.Llama(model_path, **kwargs)`` with ``llama_model_params.use_extra_bufts = False``.

    Why: on the development VM the CPU advertises AMX (cpuid: amx_tile/amx_int8) and the wheel was
    built natively, so llama.cpp repacks quantized weights into its AMX buffer type; the first
    quantized matmul then dies with SIGILL (``tilezero`` in ``ggml_backend_amx_mul_mat``) because
    the hypervisor does not actually enable AMX tile state. ``Llama`` has no parameter for it, so
    ``llama_model_default_params`` is patched for the duration of the constructor. F32 models
    (the tiny Gemma 4) never hit that path; mtmd's projectors are unaffected.
    """
    import llama_cpp
    import llama_cpp.llama_cpp as lc

    orig = lc.llama_model_default_params

    def patched():  # type: ignore[no-untyped-def]
        params = orig()
        params.use_extra_bufts = False
        return params

    lc.llama_model_default_params = patched
    try:
        kwargs.setdefault("verbose", False)
        return llama_cpp.Llama(model_path=str(model_path), **kwargs)  # type: ignore[arg-type]
    finally:
        lc.llama_model_default_params = orig


@dataclass
class Chunk:
    """One mtmd input chunk (borrowed pointer; valid while its :class:`Chunks` lives)."""

    ptr: object
    type: int
    n_tokens: int
    n_pos: int
    tokens: list[int]  # text chunks only


class Chunks:
    """Owner of an ``mtmd_input_chunks`` list."""

    def __init__(self, ptr: object) -> None:
        import llama_cpp.mtmd_cpp as mtmd

        self.ptr = ptr
        self.items: list[Chunk] = []
        for i in range(mtmd.mtmd_input_chunks_size(ptr)):
            c = mtmd.mtmd_input_chunks_get(ptr, i)
            ctype = mtmd.mtmd_input_chunk_get_type(c)
            toks: list[int] = []
            if ctype == CHUNK_TEXT:
                n = ctypes.c_size_t(0)
                arr = mtmd.mtmd_input_chunk_get_tokens_text(c, ctypes.byref(n))
                toks = [arr[j] for j in range(n.value)]
            self.items.append(
                Chunk(
                    ptr=c,
                    type=ctype,
                    n_tokens=mtmd.mtmd_input_chunk_get_n_tokens(c),
                    n_pos=mtmd.mtmd_input_chunk_get_n_pos(c),
                    tokens=toks,
                )
            )

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Chunk:
        return self.items[i]

    def close(self) -> None:
        import llama_cpp.mtmd_cpp as mtmd

        if self.ptr is not None:
            mtmd.mtmd_input_chunks_free(self.ptr)
            self.ptr = None

    def __enter__(self) -> Chunks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def image_bitmap(rgb: np.ndarray) -> object:
    """``mtmd_bitmap`` from an (H, W, 3) uint8 RGB array (the data is copied by mtmd)."""
    import llama_cpp.mtmd_cpp as mtmd

    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) uint8, got {rgb.shape}")
    h, w, _ = rgb.shape
    buf = rgb.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
    bmp = mtmd.mtmd_bitmap_init(w, h, buf)
    if not bmp:
        raise RuntimeError("mtmd_bitmap_init failed")
    return bmp


def audio_bitmap(samples: np.ndarray) -> object:
    """``mtmd_bitmap`` from mono float32 PCM (16 kHz for gemma4ua)."""
    import llama_cpp.mtmd_cpp as mtmd

    samples = np.ascontiguousarray(samples, dtype=np.float32).reshape(-1)
    buf = samples.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    bmp = mtmd.mtmd_bitmap_init_from_audio(samples.size, buf)
    if not bmp:
        raise RuntimeError("mtmd_bitmap_init_from_audio failed")
    return bmp


class Mtmd:
    """An ``mtmd_context`` for one projector file and one loaded text model."""

    def __init__(
        self,
        mmproj: Path | str,
        model: object,
        *,
        n_threads: int = 2,
        image_min_tokens: int = 0,
        image_max_tokens: int = 0,
        warmup: bool = False,
    ) -> None:
        import llama_cpp.mtmd_cpp as mtmd

        params = mtmd.mtmd_context_params_default()
        params.use_gpu = False
        params.print_timings = False
        params.n_threads = n_threads
        params.warmup = warmup
        if image_min_tokens > 0:
            params.image_min_tokens = image_min_tokens
        if image_max_tokens > 0:
            params.image_max_tokens = image_max_tokens
        ctx = mtmd.mtmd_init_from_file(str(mmproj).encode(), model, params)
        if not ctx:
            raise RuntimeError(f"mtmd_init_from_file failed for {mmproj}")
        self.ctx = ctx
        self.model = model

    @property
    def support_vision(self) -> bool:
        import llama_cpp.mtmd_cpp as mtmd

        return bool(mtmd.mtmd_support_vision(self.ctx))

    @property
    def support_audio(self) -> bool:
        import llama_cpp.mtmd_cpp as mtmd

        return bool(mtmd.mtmd_support_audio(self.ctx))

    @property
    def audio_sample_rate(self) -> int:
        import llama_cpp.mtmd_cpp as mtmd

        return int(mtmd.mtmd_get_audio_sample_rate(self.ctx))

    @staticmethod
    def marker() -> str:
        import llama_cpp.mtmd_cpp as mtmd

        return mtmd.mtmd_default_marker().decode()

    def tokenize(
        self,
        text: str,
        media: Sequence[np.ndarray] = (),
        *,
        add_special: bool = True,
        parse_special: bool = True,
    ) -> Chunks:
        """Tokenize ``text`` (with one marker per item of ``media``). uint8 (H, W, 3) arrays are
        images, 1-D float arrays are 16 kHz waveforms. Raises on a non-zero mtmd_tokenize result."""
        import llama_cpp.mtmd_cpp as mtmd

        bitmaps = [image_bitmap(m) if m.ndim == 3 else audio_bitmap(m) for m in media]
        try:
            raw = text.encode()
            inp = mtmd.mtmd_input_text(raw, len(raw), add_special, parse_special)
            arr = (mtmd.mtmd_bitmap_p_ctypes * max(1, len(bitmaps)))(*bitmaps)
            chunks = mtmd.mtmd_input_chunks_init()
            res = mtmd.mtmd_tokenize(self.ctx, chunks, ctypes.byref(inp), arr, len(bitmaps))
            if res != 0:
                mtmd.mtmd_input_chunks_free(chunks)
                raise RuntimeError(f"mtmd_tokenize returned {res}")
            return Chunks(chunks)
        finally:
            for b in bitmaps:
                mtmd.mtmd_bitmap_free(b)

    def encode(self, chunk: Chunk, n_embd: int) -> np.ndarray:
        """Run the projector on a media chunk; return a copy of its (n_tokens, n_embd) embeddings."""
        import llama_cpp.mtmd_cpp as mtmd

        if chunk.type == CHUNK_TEXT:
            raise ValueError("text chunk")
        res = mtmd.mtmd_encode_chunk(self.ctx, chunk.ptr)
        if res != 0:
            raise RuntimeError(f"mtmd_encode_chunk returned {res}")
        ptr = mtmd.mtmd_get_output_embd(self.ctx)
        flat = np.ctypeslib.as_array(ptr, shape=(chunk.n_tokens * n_embd,))
        return flat.reshape(chunk.n_tokens, n_embd).copy()

    def eval_chunk(self, lctx: object, chunk: Chunk, n_past: int, n_batch: int, *, logits_last: bool = False) -> int:
        """``mtmd_helper_eval_chunk_single``; returns the new n_past."""
        import llama_cpp
        import llama_cpp.mtmd_cpp as mtmd

        new_n_past = llama_cpp.llama_pos(n_past)
        res = mtmd.mtmd_helper_eval_chunk_single(
            self.ctx, lctx, chunk.ptr, n_past, 0, n_batch, logits_last, ctypes.byref(new_n_past)
        )
        if res != 0:
            raise RuntimeError(f"mtmd_helper_eval_chunk_single returned {res}")
        return int(new_n_past.value)

    def close(self) -> None:
        import llama_cpp.mtmd_cpp as mtmd

        if self.ctx is not None:
            mtmd.mtmd_free(self.ctx)
            self.ctx = None

    def __enter__(self) -> Mtmd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _process(lctx: object, batch: object) -> None:
    import llama_cpp

    res = llama_cpp.llama_process(lctx, llama_cpp.LLAMA_PROCESS_TYPE_DECODE, batch)
    if res != 0:
        raise RuntimeError(f"llama_process returned {res}")


def decode_tokens(lctx: object, tokens: Sequence[int], pos0: int, *, logits_last: bool = True) -> int:
    """Decode ``tokens`` at positions ``pos0..``; returns the next position."""
    import llama_cpp

    batch = llama_cpp.llama_batch_ext_init(lctx)
    try:
        for i, t in enumerate(tokens):
            idx = llama_cpp.llama_batch_ext_add_token(batch, 0, int(t))
            if idx < 0:
                raise RuntimeError(f"llama_batch_ext_add_token returned {idx}")
            pos = llama_cpp.llama_pos(pos0 + i)
            llama_cpp.llama_batch_ext_set_pos(batch, idx, ctypes.byref(pos))
            if logits_last and i == len(tokens) - 1:
                llama_cpp.llama_batch_ext_set_output_logits(batch, idx, True)
        _process(lctx, batch)
    finally:
        llama_cpp.llama_batch_ext_free(batch)
    return pos0 + len(tokens)


def decode_embeddings(
    lctx: object, embd: np.ndarray, pos0: int, *, logits_last: bool = True, non_causal: bool = False
) -> int:
    """Decode raw input embeddings (n, n_embd) at positions ``pos0..`` in one batch (so n must not
    exceed n_batch/n_ubatch); returns the next position. ``non_causal`` mirrors what mtmd does
    for gemma4uv images (bidirectional attention on the sliding-window layers)."""
    import llama_cpp

    embd = np.ascontiguousarray(embd, dtype=np.float32)
    n, n_embd = embd.shape
    batch = llama_cpp.llama_batch_ext_init(lctx)
    if non_causal:
        llama_cpp.llama_set_causal_attn(lctx, False)
    try:
        base = embd.ctypes.data
        for i in range(n):
            row = ctypes.cast(base + i * n_embd * 4, ctypes.POINTER(ctypes.c_float))
            idx = llama_cpp.llama_batch_ext_add_embd(batch, 0, llama_cpp.llama_embd(row, 1, n_embd))
            if idx < 0:
                raise RuntimeError(f"llama_batch_ext_add_embd returned {idx}")
            pos = llama_cpp.llama_pos(pos0 + i)
            llama_cpp.llama_batch_ext_set_pos(batch, idx, ctypes.byref(pos))
            if logits_last and i == n - 1:
                llama_cpp.llama_batch_ext_set_output_logits(batch, idx, True)
        _process(lctx, batch)
    finally:
        if non_causal:
            llama_cpp.llama_set_causal_attn(lctx, True)
        llama_cpp.llama_batch_ext_free(batch)
    return pos0 + n


def last_logits(lctx: object, n_vocab: int) -> np.ndarray:
    import llama_cpp

    ptr = llama_cpp.llama_get_logits_ith(lctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(n_vocab,)).copy()


def greedy(lctx: object, n_vocab: int, pos: int, n: int, *, stop: Sequence[int] = ()) -> list[int]:
    """Greedy continuation of ``n`` tokens from the logits left by the previous decode."""
    out: list[int] = []
    for _ in range(n):
        tok = int(np.argmax(last_logits(lctx, n_vocab)))
        out.append(tok)
        if tok in stop:
            break
        pos = decode_tokens(lctx, [tok], pos)
    return out


def clear_kv(lctx: object) -> None:
    import llama_cpp

    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(lctx), True)
