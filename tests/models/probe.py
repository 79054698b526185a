"""Probe projectors: hand-built ``gemma4ua`` / ``gemma4uv`` mmproj files for the real Gemma 3 270M.

Idea: the Gemma 4 unified projectors have no encoder, only normalisations and one linear map into
the text model's embedding space. Choosing that map by hand turns an audio clip or an image into
a *spelling* of chosen text tokens: a waveform window or an image patch carrying "code k" comes out
of ``mtmd_encode_chunk`` as (almost exactly) the input embedding of token ``codebook[k]``. A real,
small text model (Gemma 3 270M, n_embd 640, ``gemma3`` architecture) then *reads* the media, which
makes end-to-end tests of audio/video plumbing (decoding, resampling, frame pulling, chunking,
codecs) meaningful and deterministic on CPU.

Facts this relies on (llama-cpp-python 0.3.36, vendored llama.cpp):

* mtmd checks only that the projector's output width equals the text model's ``n_embd_inp``; the
  projector type does not have to match the text architecture (gemma4ua/uv work with gemma3).
* llama.cpp multiplies *token* embeddings by sqrt(n_embd) inside Gemma 3/4 graphs but feeds raw
  embeddings (``ubatch.embd``, what mtmd produces) unscaled. So a projector must emit
  ``token_embd[t] * sqrt(640)`` to be indistinguishable from token ``t``.
* gemma4ua: each 640-sample frame (40 ms at 16 kHz, last one zero-padded) goes through a weightless
  RMSNorm with eps 1e-6 (hard-coded) and then ``mm.a.input_projection`` (640 -> n_embd).
* gemma4uv: each 48x48 patch (CHW order, pixels ``(u8/255 - mean)/std``) goes through LayerNorm
  (eps 1e-5, hard-coded) -> ``v.patch_embd`` (+bias) -> LayerNorm -> + x/y position rows ->
  LayerNorm -> weightless RMSNorm (eps = ``clip.vision.attention.layer_norm_epsilon``) ->
  ``mm.input_projection``.

Audio design: code k is the orthonormal DCT-II row ``first_row + k`` of length 640 (a cosine at
12.5 * (first_row + k) Hz, a whole number of half periods per frame), scaled to a fixed peak. The
RMSNorm of such a frame is ``g * dct_row`` with a known constant g, so ``W = E^T C / g`` (C: the
DCT rows in use, E: target embeddings) maps it exactly onto the target embedding. Rows are
orthonormal, so any noise (codec, resampling) only leaks a little onto the other codes, and a
nearest-token search recovers the code. The default codebook (45 tokens) uses rows 8..52, i.e.
100-650 Hz, comfortably inside what AAC, Opus and MP3 keep; even 300 codes would stay under 4 kHz.
PyAV/FFmpeg remove the AAC priming and Opus pre-skip on decode, so frames stay aligned; AAC pads
the end to whole 1024-sample frames (a token or two of near-silence may trail).

Vision design: code k is the k-th lowest 2D DCT basis pattern (excluding DC) over the 48x48 patch,
drawn in gray (R = G = B) around mid-gray. LayerNorm 1 removes the mean and the amplitude, leaving
the unit-RMS pattern z_k; ``v.patch_embd`` holds the patterns as matched filters
(row j = z_j / 6912), so patch k gives a one-hot hidden vector; LayerNorms 2 and 3 turn a one-hot
vector into ``(onehot - 1/640)/sigma`` (orthogonal to all-ones, but linearly independent for fewer
than 640 codes), and ``mm.input_projection`` is solved with a pseudo-inverse so each of these maps
exactly onto its target embedding. Position rows are zero (and sized so any image within mtmd's
default 1120-token limit stays in bounds). The default 45 codes use frequencies up to 7 half
periods per 48 px, so they survive JPEG q10, WebP and H.264 crf 45.

Image size: a probe image must be kept as is by mtmd, i.e. both sides multiples of 48 and a
patch count within [image_min_tokens, image_max_tokens] (default [70, 1120]); otherwise mtmd
rescales it (bicubic) and the patches no longer carry clean codes. :func:`tokens_to_image` lays
out 10 columns and at least 7 rows (480x336 px = 70 patches), padding with ``<pad>`` codes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from .tiny_gemma4 import AUDIO_FRAME, PATCH, write_gemma4_mmproj

#: Bump when anything written by this module changes (the pytest cache rebuilds on change).
BUILDER_VERSION = 1

SAMPLE_RATE = 16000
FRAME = AUDIO_FRAME  # 640 samples = 40 ms = one token
AUDIO_FIRST_ROW = 8  # DCT row of code 0: 8 * 12.5 Hz = 100 Hz
AUDIO_PEAK = 0.5  # peak amplitude of a code frame (full scale is 1.0)
AUDIO_RMS_EPS = 1e-6  # gemma4ua RMSNorm eps, hard-coded in clip.cpp
VISION_LN_EPS = 1e-5  # gemma4uv LayerNorm eps, hard-coded in gemma4uv.cpp
VISION_RMS_EPS = 1e-6  # what we write as clip.vision.attention.layer_norm_epsilon
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)
MIN_IMAGE_TOKENS = 70  # gemma4uv defaults (clip.cpp set_limit_image_tokens(70, 1120))
MAX_IMAGE_TOKENS = 1120
IMAGE_COLUMNS = 10  # default probe image: 10 patches wide (480 px)
N_POS = MAX_IMAGE_TOKENS  # x/y position-table rows: no side can exceed this within the default limits
PAD_TOKEN = 0  # Gemma <pad>: fills unused image patches

KEY_KIND = "gemmapipe.probe.kind"
KEY_TOKENS = "gemmapipe.probe.token_ids"
KEY_VERSION = "gemmapipe.probe.version"

#: Texts whose tokens make up the default codebook (tokenized with the text model's own tokenizer,
#: without BOS). Keep it small (< ~150 unique tokens): every code costs bandwidth.
PROBE_TEXTS: tuple[str, ...] = (
    "The capital of France is",
    " the capital of the country of France.",
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world! How are you today?",
    "Speaker 1: Good morning. Speaker 2: Thank you, see you tomorrow.",
    "0 1 2 3 4 5 6 7 8 9 10",
    " Paris",
)


# --------------------------------------------------------------------------------------------------
# text-model access
# --------------------------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _vocab_model(text_model_path: str):  # type: ignore[no-untyped-def]
    import llama_cpp

    return llama_cpp.Llama(model_path=text_model_path, vocab_only=True, verbose=False)


def tokenize(text_model_path: Path | str, text: str, *, add_bos: bool = False) -> list[int]:
    """Tokenize with the text model's own tokenizer (vocab-only load, cached)."""
    llm = _vocab_model(str(text_model_path))
    return list(llm.tokenize(text.encode(), add_bos=add_bos, special=False))


def default_codebook(text_model_path: Path | str, texts: Iterable[str] = PROBE_TEXTS) -> list[int]:
    """Sorted unique token ids of ``texts`` plus ``PAD_TOKEN`` (always code 0)."""
    ids = {t for text in texts for t in tokenize(text_model_path, text)}
    ids.discard(PAD_TOKEN)
    return [PAD_TOKEN, *sorted(ids)]


def _gguf_tensor_rows(path: Path | str, name: str) -> tuple[int, np.ndarray]:
    """(ggml type, raw rows as a uint8 memmap of shape (n_rows, row_bytes)) of tensor ``name``.

    A minimal GGUF v2/v3 header walk: ``gguf.GGUFReader`` parses every one of the 262K vocabulary
    strings into numpy views and needs ~15 s on the 270M file; skipping them takes ~0.2 s.
    """
    import struct

    import gguf

    scalar = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    mm = np.memmap(str(path), dtype=np.uint8, mode="r")
    buf = memoryview(mm)
    magic, version, n_tensors, n_kv = struct.unpack_from("<IIQQ", buf, 0)
    if magic != 0x46554747 or version < 2:
        raise ValueError(f"{path}: not a GGUF v2+ file")
    off = 24
    alignment = 32

    def read_str(o: int) -> tuple[str, int]:
        (n,) = struct.unpack_from("<Q", buf, o)
        return bytes(buf[o + 8 : o + 8 + n]).decode("utf-8", "replace"), o + 8 + n

    def skip_value(vtype: int, o: int) -> int:
        if vtype in scalar:
            return o + scalar[vtype]
        if vtype == 8:
            (n,) = struct.unpack_from("<Q", buf, o)
            return o + 8 + n
        if vtype == 9:
            etype, n = struct.unpack_from("<IQ", buf, o)
            o += 12
            if etype in scalar:
                return o + n * scalar[etype]
            for _ in range(n):
                o = skip_value(etype, o)
            return o
        raise ValueError(f"bad GGUF value type {vtype}")

    for _ in range(n_kv):
        key, off = read_str(off)
        (vtype,) = struct.unpack_from("<I", buf, off)
        off += 4
        if key == "general.alignment" and vtype == 4:
            (alignment,) = struct.unpack_from("<I", buf, off)
        off = skip_value(vtype, off)
    infos = {}
    for _ in range(n_tensors):
        tname, off = read_str(off)
        (n_dims,) = struct.unpack_from("<I", buf, off)
        dims = struct.unpack_from(f"<{n_dims}Q", buf, off + 4)
        ttype, toff = struct.unpack_from("<IQ", buf, off + 4 + 8 * n_dims)
        off += 4 + 8 * n_dims + 12
        infos[tname] = (dims, ttype, toff)
    data_start = (off + alignment - 1) // alignment * alignment
    dims, ttype, toff = infos[name]
    block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ttype)]
    row_bytes = dims[0] // block * type_size
    n_rows = int(np.prod(dims[1:])) if len(dims) > 1 else 1
    start = data_start + toff
    return ttype, mm[start : start + n_rows * row_bytes].reshape(n_rows, row_bytes)


def load_token_embeddings(
    text_model_path: Path | str, token_ids: Sequence[int] | None = None, *, scaled: bool = True
) -> np.ndarray:
    """Dequantized ``token_embd`` rows (all rows when ``token_ids`` is None) as float32 (n, n_embd).

    ``scaled=True`` multiplies by sqrt(n_embd): what Gemma graphs actually feed the first layer for
    a token, and therefore what a projector must emit. The whole 262K x 640 Q8_0 table of Gemma 3
    270M dequantizes in ~1.7 s and takes 670 MB.
    """
    import gguf

    ttype, raw = _gguf_tensor_rows(text_model_path, "token_embd.weight")
    data = raw if token_ids is None else raw[np.asarray(token_ids, dtype=np.int64)]
    qtype = gguf.GGMLQuantizationType(ttype)
    rows = gguf.quants.dequantize(np.asarray(data), qtype).astype(np.float32, copy=False)
    rows = rows.reshape(rows.shape[0], -1)
    if scaled:
        rows = rows * np.float32(np.sqrt(rows.shape[1]))
    return rows


def nearest_tokens(
    embd: np.ndarray,
    token_embd: np.ndarray,
    candidates: Sequence[int] | None = None,
    *,
    metric: str = "cosine",
) -> list[int]:
    """Nearest token id for each row of ``embd`` (n, n_embd).

    ``token_embd`` is either the full table (row = token id) or, with ``candidates``, the rows of
    those token ids in the same order. ``metric`` is ``"cosine"`` (scale-free) or ``"l2"``
    (compare against *scaled* embeddings, see :func:`load_token_embeddings`).
    """
    embd = np.atleast_2d(np.asarray(embd, dtype=np.float32))
    table = np.asarray(token_embd, dtype=np.float32)
    if metric == "cosine":
        norms = np.linalg.norm(table, axis=1)
        norms[norms == 0] = 1.0
        scores = (embd @ table.T) / norms[None, :]
    elif metric == "l2":
        scores = 2.0 * (embd @ table.T) - np.einsum("ij,ij->i", table, table)[None, :]
    else:
        raise ValueError(metric)
    best = np.argmax(scores, axis=1)
    if candidates is not None:
        return [int(candidates[i]) for i in best]
    return [int(i) for i in best]


def read_probe_codebook(mmproj_path: Path | str) -> list[int]:
    """The codebook (token id of each code) stored in a probe mmproj's metadata."""
    import gguf

    reader = gguf.GGUFReader(str(mmproj_path))
    field = reader.fields[KEY_TOKENS]
    return [int(field.parts[i][0]) for i in field.data]


# --------------------------------------------------------------------------------------------------
# audio probe
# --------------------------------------------------------------------------------------------------


def dct_rows(rows: Sequence[int] | np.ndarray, n: int = FRAME) -> np.ndarray:
    """Orthonormal DCT-II basis rows ``sqrt(2/n) cos(pi (i + 1/2) k / n)`` (k >= 1), float64 (len, n)."""
    k = np.asarray(rows, dtype=np.float64)[:, None]
    i = np.arange(n, dtype=np.float64)[None, :]
    return np.sqrt(2.0 / n) * np.cos(np.pi * (i + 0.5) * k / n)


def _audio_code_scale(peak: float = AUDIO_PEAK, n: int = FRAME) -> float:
    """Amplitude a with max |a * dct_row| == peak (the DCT row peak is sqrt(2/n))."""
    return peak / np.sqrt(2.0 / n)


def tokens_to_waveform(
    token_ids: Sequence[int],
    codebook: Sequence[int],
    *,
    first_row: int = AUDIO_FIRST_ROW,
    peak: float = AUDIO_PEAK,
) -> np.ndarray:
    """16 kHz mono float32 waveform spelling ``token_ids``: 640 samples (40 ms) per token.

    Every token must be in ``codebook`` (raises KeyError otherwise).
    """
    index = {t: i for i, t in enumerate(codebook)}
    codes = [index[int(t)] for t in token_ids]
    rows = dct_rows([first_row + c for c in codes])
    wave = _audio_code_scale(peak) * rows
    return wave.reshape(-1).astype(np.float32)


def waveform_to_codes(wave: np.ndarray, n_codes: int, *, first_row: int = AUDIO_FIRST_ROW) -> list[int]:
    """Reference decoder without llama.cpp: best-matching code per 640-sample frame."""
    n = len(wave) // FRAME
    frames = np.asarray(wave[: n * FRAME], dtype=np.float64).reshape(n, FRAME)
    proj = frames @ dct_rows(np.arange(first_row, first_row + n_codes)).T
    return [int(i) for i in np.argmax(proj, axis=1)]


def build_audio_probe(
    out_dir: Path,
    text_model_path: Path | str,
    *,
    codebook: Sequence[int] | None = None,
    first_row: int = AUDIO_FIRST_ROW,
    peak: float = AUDIO_PEAK,
) -> Path:
    """Write ``probe-audio.gguf``: a gemma4ua-only mmproj whose code k -> token ``codebook[k]``.

    Default codebook: :func:`default_codebook`. At most ``640 - first_row`` codes fit (and lossy
    codecs want far fewer, so the rows stay low-frequency).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cb = list(codebook) if codebook is not None else default_codebook(text_model_path)
    if first_row < 1 or first_row + len(cb) > FRAME:
        raise ValueError("codes must use DCT rows 1..639")
    emb = load_token_embeddings(text_model_path, cb).astype(np.float64)  # (K, n_embd), scaled
    n_embd = emb.shape[1]
    c = dct_rows(np.arange(first_row, first_row + len(cb)))  # (K, 640)
    a = _audio_code_scale(peak)
    g = a / np.sqrt(a * a / FRAME + AUDIO_RMS_EPS)  # RMSNorm(a * row) == g * row
    w = emb.T @ c / g  # (n_embd, 640): W @ (g * row_k) == emb_k
    path = out_dir / "probe-audio.gguf"
    write_gemma4_mmproj(
        path,
        n_embd_text=n_embd,
        vision=None,
        audio={"mm.a.input_projection.weight": w.astype(np.float32)},
        eps=AUDIO_RMS_EPS,
        extra_kv={KEY_KIND: "audio", KEY_TOKENS: [int(t) for t in cb], KEY_VERSION: BUILDER_VERSION},
    )
    return path


# --------------------------------------------------------------------------------------------------
# vision probe
# --------------------------------------------------------------------------------------------------


def _vision_freqs(n_codes: int) -> list[tuple[int, int]]:
    """The ``n_codes`` lowest (u, v) 2D DCT frequencies, DC excluded, ordered by u^2 + v^2."""
    side = int(np.ceil(np.sqrt(n_codes + 1))) + 2
    pairs = [(u, v) for u in range(side) for v in range(side) if (u, v) != (0, 0)]
    pairs.sort(key=lambda p: (p[0] ** 2 + p[1] ** 2, max(p), p))
    if len(pairs) < n_codes:
        raise ValueError("too many codes")
    return pairs[:n_codes]


def code_patch(code: int, n_codes: int) -> np.ndarray:
    """The (48, 48) uint8 gray patch for ``code``: 128 + 127 * pattern / max|pattern|."""
    u, v = _vision_freqs(n_codes)[code]
    x = np.arange(PATCH, dtype=np.float64)
    bx = np.cos(np.pi * (x + 0.5) * u / PATCH)
    by = np.cos(np.pi * (x + 0.5) * v / PATCH)
    pat = by[:, None] * bx[None, :]
    pat = pat / np.max(np.abs(pat))
    return np.clip(np.round(128.0 + 127.0 * pat), 0, 255).astype(np.uint8)


def image_grid(n_tokens: int, *, columns: int = IMAGE_COLUMNS, min_patches: int = MIN_IMAGE_TOKENS) -> tuple[int, int]:
    """(columns, rows) of the probe image for ``n_tokens`` tokens: at least ``min_patches`` patches."""
    rows = max(-(-n_tokens // columns), -(-min_patches // columns))
    if columns * rows > MAX_IMAGE_TOKENS:
        raise ValueError(f"{n_tokens} tokens exceed the {MAX_IMAGE_TOKENS}-token image limit")
    return columns, rows


def tokens_to_image(
    token_ids: Sequence[int],
    codebook: Sequence[int],
    *,
    columns: int = IMAGE_COLUMNS,
    min_patches: int = MIN_IMAGE_TOKENS,
    pad_token: int = PAD_TOKEN,
) -> np.ndarray:
    """RGB uint8 (H, W, 3) image spelling ``token_ids``, one 48x48 patch per token in reading order
    (left to right, top to bottom), padded with ``pad_token`` patches.

    The size is always a multiple of 48 on both sides with ``columns * rows`` in [70, 1120] patches,
    which llama.cpp's gemma4uv preprocessing keeps as is (it rounds each side to a multiple of 48
    and rescales, bicubic, only when the patch count falls outside [image_min_tokens,
    image_max_tokens], default [70, 1120]). mtmd's image chunk therefore has exactly
    ``columns * rows`` tokens, in the same reading order.
    """
    index = {t: i for i, t in enumerate(codebook)}
    codes = [index[int(t)] for t in token_ids]
    cols, rows = image_grid(len(codes), columns=columns, min_patches=min_patches)
    codes += [index[pad_token]] * (cols * rows - len(codes))
    patches = {c: code_patch(c, len(codebook)) for c in set(codes)}
    img = np.zeros((rows * PATCH, cols * PATCH), dtype=np.uint8)
    for i, c in enumerate(codes):
        r, q = divmod(i, cols)
        img[r * PATCH : (r + 1) * PATCH, q * PATCH : (q + 1) * PATCH] = patches[c]
    return np.repeat(img[:, :, None], 3, axis=2)


def _patch_vectors(rgb: np.ndarray) -> np.ndarray:
    """(n_patches, 6912) normalized pixel vectors in ggml im2col (CHW) order, reading order."""
    h, w, _ = rgb.shape
    x = (rgb.astype(np.float64) / 255.0 - np.array(IMAGE_MEAN)) / np.array(IMAGE_STD)
    x = x.reshape(h // PATCH, PATCH, w // PATCH, PATCH, 3).transpose(0, 2, 4, 1, 3)
    return x.reshape(-1, 3 * PATCH * PATCH)


def _layer_norm(x: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps)


def _rms_norm(x: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)


def build_vision_probe(out_dir: Path, text_model_path: Path | str, *, codebook: Sequence[int] | None = None) -> Path:
    """Write ``probe-vision.gguf``: a gemma4uv-only mmproj whose code k -> token ``codebook[k]``.

    :func:`tokens_to_image` pads with ``PAD_TOKEN``, which must be in the codebook
    (:func:`default_codebook` puts it first). At most 639 codes fit in the 640-wide hidden layer;
    keep it near 100 or below so the patterns stay low-frequency (JPEG / H.264 friendly).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cb = list(codebook) if codebook is not None else default_codebook(text_model_path)
    k = len(cb)
    emb = load_token_embeddings(text_model_path, cb).astype(np.float64)  # (K, n_embd), scaled
    n_embd = emb.shape[1]
    if k >= n_embd:
        raise ValueError(f"at most {n_embd - 1} codes")
    n_in = 3 * PATCH * PATCH

    # matched filters: hidden j = <LN1(patch), z_j> / n_in, one-hot for clean patches
    clean = np.stack([np.repeat(code_patch(c, k)[:, :, None], 3, axis=2) for c in range(k)])
    z = _layer_norm(np.concatenate([_patch_vectors(p) for p in clean]), VISION_LN_EPS)  # (K, n_in)
    w0 = np.zeros((n_embd, n_in))
    w0[:k] = z / n_in
    # simulate the rest of the graph on the clean codes and solve the projection exactly
    h = z @ w0.T  # (K, n_embd)
    u = _rms_norm(_layer_norm(_layer_norm(h, VISION_LN_EPS), VISION_LN_EPS), VISION_RMS_EPS)
    proj = emb.T @ np.linalg.pinv(u.T)  # (n_embd, n_embd): proj @ u_k == emb_k
    vision = {
        "v.patch_norm.1.weight": np.ones(n_in, np.float32),
        "v.patch_norm.1.bias": np.zeros(n_in, np.float32),
        "v.patch_embd.weight": w0.astype(np.float32),
        "v.patch_embd.bias": np.zeros(n_embd, np.float32),
        "v.patch_norm.2.weight": np.ones(n_embd, np.float32),
        "v.patch_norm.2.bias": np.zeros(n_embd, np.float32),
        "v.position_embd.weight": np.zeros((2, N_POS, n_embd), np.float32),
        "v.patch_norm.3.weight": np.ones(n_embd, np.float32),
        "v.patch_norm.3.bias": np.zeros(n_embd, np.float32),
        "mm.input_projection.weight": proj.astype(np.float32),
    }
    path = out_dir / "probe-vision.gguf"
    write_gemma4_mmproj(
        path,
        n_embd_text=n_embd,
        vision=vision,
        audio=None,
        image_mean=IMAGE_MEAN,
        image_std=IMAGE_STD,
        eps=VISION_RMS_EPS,
        extra_kv={KEY_KIND: "vision", KEY_TOKENS: [int(t) for t in cb], KEY_VERSION: BUILDER_VERSION},
    )
    return path


def image_to_codes(rgb: np.ndarray, n_codes: int) -> list[int]:
    """Reference decoder without llama.cpp: best-matching code per 48x48 patch (reading order)."""
    clean = np.stack([np.repeat(code_patch(c, n_codes)[:, :, None], 3, axis=2) for c in range(n_codes)])
    z = _layer_norm(np.concatenate([_patch_vectors(p) for p in clean]), VISION_LN_EPS)
    x = _layer_norm(_patch_vectors(rgb), VISION_LN_EPS)
    return [int(i) for i in np.argmax(x @ z.T, axis=1)]


def build_av_probe(out_dir: Path, vision_probe: Path | str, audio_probe: Path | str) -> Path:
    """Write ``probe-av.gguf``: the vision and audio probes in one mmproj (what `video` needs), by
    copying both projectors' tensors. Both must share a codebook (the default one does)."""
    import gguf

    def tensors(path: Path | str) -> dict[str, np.ndarray]:
        reader = gguf.GGUFReader(str(path))
        return {t.name: np.array(t.data, dtype=np.float32).reshape(tuple(reversed([int(d) for d in t.shape])))
                for t in reader.tensors}

    cb_v, cb_a = read_probe_codebook(vision_probe), read_probe_codebook(audio_probe)
    if cb_v != cb_a:
        raise ValueError("the two probes use different codebooks")
    vision = tensors(vision_probe)
    audio = tensors(audio_probe)
    n_embd = vision["mm.input_projection.weight"].shape[0]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "probe-av.gguf"
    write_gemma4_mmproj(
        path, n_embd_text=n_embd, vision=vision, audio=audio, image_mean=IMAGE_MEAN, image_std=IMAGE_STD,
        eps=VISION_RMS_EPS,
        extra_kv={KEY_KIND: "av", KEY_TOKENS: [int(t) for t in cb_v], KEY_VERSION: BUILDER_VERSION},
    )
    return path


_SUBJECTS = ["The quick brown fox", "The lazy dog", "Hello, world", "Speaker 1", "Speaker 2",
             "The capital of France", "The brown dog", "Hello, Paris"]
_ENDS = ["jumps over the lazy dog.", "is Paris.", "How are you today?", "see you tomorrow!", "is 1 2 3.",
         "is 4 5 6 7.", "Thank you!", "is the capital of the country."]


def probe_sentences(n: int) -> list[str]:
    """`n` distinct short sentences made only of the default codebook's tokens (for batches of
    probe clips and images)."""
    out = []
    for k in range(n):
        a, b = _SUBJECTS[k % len(_SUBJECTS)], _ENDS[(k * 3 + k // len(_SUBJECTS)) % len(_ENDS)]
        out.append(f"{a} {b}" if k < len(_SUBJECTS) * len(_ENDS) else f"{a} {b} {k}")
    return out
