"""Real llama.cpp (llama-cpp-python 0.3.36 + libmtmd) on the test models of tests/models/.

* the tiny random Gemma 4 pair: loads, tokenizes Gemma 4 specials, renders its chat template,
  generates, and evaluates an image and an audio clip through mtmd in one prompt;
* the audio probe on Gemma 3 270M: a waveform spelling "The capital of France is" makes the model
  continue exactly as the same tokens given as text, and survives AAC (m4a) and Opus round trips;
* the vision probe: an image spelling a sentence survives PNG, JPEG and an H.264 mp4 pulled at 1 FPS.

Tolerances (and why):
* continuation: the greedy tokens must be identical (8 tokens). The probe's embeddings differ from
  ``token_embd * sqrt(640)`` by float rounding only (max |diff| measured 2e-6 for audio, 1.3e-5 for
  vision, values up to ~13), so we also assert max |diff| < 1e-3.
* lossy media: every token must be recovered by a nearest-token search (cosine) over the FULL 262K
  vocabulary, and the cosine to the right token must be >= 0.9. Measured minimum cosines: AAC
  (FFmpeg native, default bitrate) 0.955, Opus (libopus default) 0.999, PNG 1.0, JPEG q75 0.99998,
  H.264 crf 23 0.99997. Codes are orthogonal, so codec noise spreads thinly over the other codes;
  the token check is exact, the cosine floor only guards against a right answer by luck (the
  runner-up over the full vocabulary sat >= 0.07 below the winner in every case).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.model

llama_cpp = pytest.importorskip("llama_cpp")
pytest.importorskip("llama_cpp.mtmd_cpp")

from models import probe  # noqa: E402
from models.mtmd_util import (  # noqa: E402
    CHUNK_AUDIO,
    CHUNK_IMAGE,
    CHUNK_TEXT,
    Mtmd,
    clear_kv,
    decode_embeddings,
    decode_tokens,
    greedy,
    load_llama,
    silence_native_logs,
)

#: 1 thread by default: on a busy 2-core box ggml's OpenMP spin-waits make 2 threads up to 10x slower.
THREADS = int(os.environ.get("GEMMAPIPE_TEST_THREADS", "1"))
N_CONTINUE = 8
MIN_COSINE = 0.9


@pytest.fixture(scope="module", autouse=True)
def _quiet() -> None:
    silence_native_logs()


# ---------------------------------------------------------------------------------------------
# tiny Gemma 4
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_llm(tiny_gemma4: tuple[Path, Path]) -> Any:
    model, _ = tiny_gemma4
    # n_batch = n_ubatch must hold the largest image (81 tokens for the 96x96 one below)
    return load_llama(model, n_ctx=1024, n_batch=256, n_ubatch=256, n_threads=THREADS, n_threads_batch=THREADS)


def test_tiny_gemma4_text(tiny_llm: Any, tiny_gemma4: tuple[Path, Path]) -> None:
    from models import tiny_gemma4 as tg

    llm = tiny_llm
    assert llm.metadata["general.architecture"] == "gemma4"
    assert llm.n_embd() == tg.N_EMBD
    # every Gemma 4 special is one token
    for text, _ in tg.SPECIAL_TOKENS:
        toks = llm.tokenize(text.encode(), add_bos=False, special=True)
        assert len(toks) == 1, text
        assert llm.detokenize(toks, special=True).decode() == text
    # any text round-trips (byte fallback for non-ASCII)
    s = "Hello, world! Größe 42\n\nok"
    assert llm.detokenize(llm.tokenize(s.encode(), add_bos=False)).decode() == s
    # eos / end-of-turn are end-of-generation tokens
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    for eog in ("<eos>", "<turn|>", "<|tool_response>"):
        (tok,) = llm.tokenize(eog.encode(), add_bos=False, special=True)
        assert llama_cpp.llama_vocab_is_eog(vocab, tok), eog
    # chat template in Gemma 4 format
    from jinja2 import Environment

    tmpl = Environment().from_string(llm.metadata["tokenizer.chat_template"])
    msgs = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Yo"},
        {"role": "user", "content": "Q"},
    ]
    rendered = tmpl.render(messages=msgs, bos_token="<bos>", add_generation_prompt=True)
    assert rendered == (
        "<bos><|turn>user\nHi<turn|>\n<|turn>model\nYo<turn|>\n<|turn>user\nQ<turn|>\n"
        "<|turn>model\n<|channel>thought\n<channel|>"
    )
    thinking = tmpl.render(messages=msgs[:1], bos_token="<bos>", add_generation_prompt=True, enable_thinking=True)
    assert thinking == "<bos><|turn>system\n<|think|><turn|>\n<|turn>user\nHi<turn|>\n<|turn>model\n"
    # suppress tokens (an INT32 array the converter writes from generation_config.json)
    import gguf

    reader = gguf.GGUFReader(str(tiny_gemma4[0]))
    field = reader.fields["tokenizer.ggml.suppress_tokens"]
    suppressed = {llm.detokenize([int(field.parts[i][0])], special=True).decode() for i in field.data}
    assert suppressed == set(tg.SUPPRESSED_TOKENS)
    # generation
    clear_kv(llm.ctx)
    out = llm.create_completion("<|turn>user\nHello<turn|>\n<|turn>model\n", max_tokens=4, temperature=0.0)
    assert out["usage"]["completion_tokens"] >= 1
    # llama-cpp-python's own Jinja formatter accepts the template
    chat = llm.create_chat_completion(messages=msgs[:1], max_tokens=2, temperature=0.0)
    prompt = tmpl.render(messages=msgs[:1], bos_token="<bos>", add_generation_prompt=True)
    assert chat["usage"]["prompt_tokens"] == len(llm.tokenize(prompt.encode(), add_bos=False, special=True))


def test_tiny_gemma4_image_and_audio(tiny_llm: Any, tiny_gemma4: tuple[Path, Path]) -> None:
    import ctypes

    import llama_cpp.mtmd_cpp as mtmd

    llm = tiny_llm
    _, mmproj = tiny_gemma4
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    audio = (0.3 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)).astype(np.float32)  # 1 s
    with Mtmd(mmproj, llm.model, n_threads=THREADS) as m:
        assert m.support_vision and m.support_audio
        assert m.audio_sample_rate == 16000
        mk = m.marker()
        prompt = f"<|turn>user\nLook {mk} and listen {mk}<turn|>\n<|turn>model\n"
        with m.tokenize(prompt, [image, audio]) as chunks:
            kinds = [c.type for c in chunks]
            assert kinds == [CHUNK_TEXT, CHUNK_IMAGE, CHUNK_TEXT, CHUNK_AUDIO, CHUNK_TEXT]
            # mtmd wraps media in <|image> ... <image|> / <|audio> ... <audio|> (single special tokens)
            piece = lambda t: llm.detokenize([t], special=True).decode()  # noqa: E731
            assert piece(chunks[0].tokens[0]) == "<bos>"
            assert piece(chunks[0].tokens[-1]) == "<|image>"
            assert piece(chunks[2].tokens[0]) == "<image|>"
            assert piece(chunks[2].tokens[-1]) == "<|audio>"
            assert piece(chunks[4].tokens[0]) == "<audio|>"
            # 96x96 is below the 70-token minimum: upscaled to 432x432 = 9x9 patches of 48 px
            assert chunks[1].n_tokens == chunks[1].n_pos == 81
            assert chunks[3].n_tokens == chunks[3].n_pos == 25  # 16000 / 640
            total = sum(c.n_pos for c in chunks)
            clear_kv(llm.ctx)
            n_past = llama_cpp.llama_pos(0)
            res = mtmd.mtmd_helper_eval_chunks(m.ctx, llm.ctx, chunks.ptr, 0, 0, 256, True, ctypes.byref(n_past))
            assert res == 0
            assert n_past.value == total
            out = greedy(llm.ctx, llm.n_vocab(), n_past.value, 3)
            assert len(out) == 3
            emb = m.encode(chunks[3], llm.n_embd())
            assert emb.shape == (25, llm.n_embd()) and np.isfinite(emb).all()


@pytest.mark.parametrize(
    ("size", "tokens"),
    [
        ((96, 96), 81),
        ((224, 224), 81),
        ((480, 336), 70),
        ((1024, 768), 336),
        ((1920, 1080), 920),
        ((4000, 3000), 1064),
    ],
)
def test_gemma4uv_image_token_counts(
    tiny_llm: Any, tiny_gemma4: tuple[Path, Path], size: tuple[int, int], tokens: int
) -> None:
    w, h = size
    image = np.zeros((h, w, 3), np.uint8)
    with (
        Mtmd(tiny_gemma4[1], tiny_llm.model, n_threads=THREADS) as m,
        m.tokenize(m.marker(), [image], add_special=False) as chunks,
    ):
        (img,) = [c for c in chunks if c.type == CHUNK_IMAGE]
        assert img.n_tokens == tokens


# ---------------------------------------------------------------------------------------------
# probes on Gemma 3 270M
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llm270(gemma3_270m: Path) -> Any:
    return load_llama(gemma3_270m, n_ctx=1024, n_batch=256, n_ubatch=256, n_threads=THREADS, n_threads_batch=THREADS)


@pytest.fixture(scope="module")
def vocab_embd(gemma3_270m: Path) -> tuple[np.ndarray, np.ndarray]:
    """Full scaled 262K x 640 embedding table and its row norms (~1.7 s, 670 MB)."""
    table = probe.load_token_embeddings(gemma3_270m)
    return table, np.linalg.norm(table, axis=1)


def _decode_full_vocab(embd: np.ndarray, vocab_embd: tuple[np.ndarray, np.ndarray]) -> tuple[list[int], np.ndarray]:
    """Nearest tokens over the whole vocabulary and the cosine of each winner."""
    table, norms = vocab_embd
    scores = (embd @ table.T) / norms[None, :] / np.linalg.norm(embd, axis=1, keepdims=True)
    best = np.argmax(scores, axis=1)
    return [int(b) for b in best], scores[np.arange(len(best)), best]


def _encode_media(m: Mtmd, media: np.ndarray, n_embd: int) -> np.ndarray:
    with m.tokenize(m.marker(), [media], add_special=False) as chunks:
        (chunk,) = [c for c in chunks if c.type != CHUNK_TEXT]
        return m.encode(chunk, n_embd)


SENTENCE = "The capital of France is"


def test_audio_probe_continues_like_text(llm270: Any, gemma3_270m: Path, audio_probe: Path) -> None:
    llm = llm270
    ids = probe.tokenize(gemma3_270m, SENTENCE)
    codebook = probe.read_probe_codebook(audio_probe)
    wave = probe.tokens_to_waveform(ids, codebook)
    assert wave.dtype == np.float32 and wave.size == 640 * len(ids) and np.abs(wave).max() <= 1.0
    bos, n_vocab = llm.token_bos(), llm.n_vocab()

    clear_kv(llm.ctx)
    text_out = greedy(llm.ctx, n_vocab, decode_tokens(llm.ctx, [bos, *ids], 0), N_CONTINUE)
    assert llm.detokenize(text_out).decode().startswith(" the capital of")

    with Mtmd(audio_probe, llm.model, n_threads=THREADS) as m:
        assert m.support_audio and not m.support_vision
        emb = _encode_media(m, wave, llm.n_embd())
        want = probe.load_token_embeddings(gemma3_270m, ids)
        assert np.abs(emb - want).max() < 1e-3

        # 1) the encoded embeddings, decoded right after BOS, with logits on the last one
        clear_kv(llm.ctx)
        pos = decode_tokens(llm.ctx, [bos], 0, logits_last=False)
        pos = decode_embeddings(llm.ctx, emb, pos)
        assert greedy(llm.ctx, n_vocab, pos, N_CONTINUE) == text_out

        # 2) mtmd's own helper for the audio chunk (it requests no logits for media), then the
        #    last word as a text token
        head = probe.tokens_to_waveform(ids[:-1], codebook)
        with m.tokenize(m.marker(), [head], add_special=False) as chunks:
            (chunk,) = [c for c in chunks if c.type == CHUNK_AUDIO]
            clear_kv(llm.ctx)
            pos = decode_tokens(llm.ctx, [bos], 0, logits_last=False)
            pos = m.eval_chunk(llm.ctx, chunk, pos, 256)
        pos = decode_tokens(llm.ctx, [ids[-1]], pos)
        assert greedy(llm.ctx, n_vocab, pos, N_CONTINUE) == text_out


def _av_roundtrip_audio(wave: np.ndarray, path: Path, codec: str) -> np.ndarray:
    """Encode 16 kHz mono float ``wave`` with PyAV, decode it back resampled to 16 kHz mono float32."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(wave[None, :].astype(np.float32), format="flt", layout="mono")
        frame.sample_rate = 16000
        frame.pts = 0
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    out: list[np.ndarray] = []
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=16000)
        for frame in container.decode(audio=0):
            out.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
        out.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
    return np.concatenate(out).astype(np.float32)


@pytest.mark.parametrize(("codec", "suffix"), [("aac", ".m4a"), ("libopus", ".ogg")])
def test_audio_probe_survives_codecs(
    llm270: Any,
    gemma3_270m: Path,
    audio_probe: Path,
    vocab_embd: tuple[np.ndarray, np.ndarray],
    tmp_path: Path,
    codec: str,
    suffix: str,
) -> None:
    pytest.importorskip("av")
    ids = probe.tokenize(gemma3_270m, SENTENCE) + probe.tokenize(gemma3_270m, " the capital of the country of France.")
    codebook = probe.read_probe_codebook(audio_probe)
    wave = probe.tokens_to_waveform(ids, codebook)
    decoded = _av_roundtrip_audio(wave, tmp_path / f"probe{suffix}", codec)
    # PyAV/FFmpeg drop the encoder delay (AAC priming, Opus pre-skip): no offset to correct.
    # AAC pads to whole 1024-sample frames, so a few near-silent tokens may trail.
    assert len(decoded) >= len(wave)
    with Mtmd(audio_probe, llm270.model, n_threads=THREADS) as m:
        emb = _encode_media(m, decoded, llm270.n_embd())
    assert emb.shape[0] == -(-len(decoded) // 640)
    got, cos = _decode_full_vocab(emb[: len(ids)], vocab_embd)
    assert got == ids
    assert cos.min() >= MIN_COSINE


@pytest.fixture(scope="module")
def vision_sentence(gemma3_270m: Path) -> list[int]:
    return probe.tokenize(gemma3_270m, "The quick brown fox jumps over the lazy dog.")


def _pil_roundtrip(image: np.ndarray, fmt: str, **kwargs: object) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, fmt, **kwargs)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


@pytest.mark.parametrize(("fmt", "kwargs"), [("PNG", {}), ("JPEG", {"quality": 75})])
def test_vision_probe_survives_image_formats(
    llm270: Any,
    vision_probe: Path,
    vision_sentence: list[int],
    vocab_embd: tuple[np.ndarray, np.ndarray],
    fmt: str,
    kwargs: dict[str, Any],
) -> None:
    pytest.importorskip("PIL")
    codebook = probe.read_probe_codebook(vision_probe)
    image = probe.tokens_to_image(vision_sentence, codebook)
    assert image.shape == (7 * 48, 10 * 48, 3)  # 70 patches: kept as is by gemma4uv preprocessing
    decoded = _pil_roundtrip(image, fmt, **kwargs)
    with Mtmd(vision_probe, llm270.model, n_threads=THREADS) as m:
        assert m.support_vision and not m.support_audio
        emb = _encode_media(m, decoded, llm270.n_embd())
    assert emb.shape[0] == 70
    got, cos = _decode_full_vocab(emb[: len(vision_sentence)], vocab_embd)
    assert got == vision_sentence
    assert cos.min() >= MIN_COSINE
    # padding patches decode to <pad> among the codebook tokens
    pad = probe.nearest_tokens(
        emb[len(vision_sentence) :], probe.load_token_embeddings(llm270.model_path, codebook), codebook
    )
    assert set(pad) == {probe.PAD_TOKEN}
    if fmt == "PNG":  # lossless: the embeddings ARE the scaled token embeddings
        table, _ = vocab_embd
        assert np.abs(emb[: len(vision_sentence)] - table[vision_sentence]).max() < 1e-3


def test_vision_probe_survives_h264(
    llm270: Any,
    gemma3_270m: Path,
    vision_probe: Path,
    vocab_embd: tuple[np.ndarray, np.ndarray],
    tmp_path: Path,
) -> None:
    av = pytest.importorskip("av")
    codebook = probe.read_probe_codebook(vision_probe)
    texts = [
        "The quick brown fox jumps over the lazy dog.",
        "Hello, world! How are you today?",
        "The capital of France is Paris",
    ]
    sentences = [probe.tokenize(gemma3_270m, t) for t in texts]
    images = [probe.tokens_to_image(s, codebook) for s in sentences]
    h, w, _ = images[0].shape
    fps = 2
    path = tmp_path / "probe.mp4"
    with av.open(str(path), "w") as container:  # 3 s, 2 fps, pixels constant within each second
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": "23", "preset": "veryfast"}
        pts = 0
        for image in images:
            for _ in range(fps):
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts = pts
                pts += 1
                for packet in stream.encode(frame):
                    container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    frames: list[np.ndarray] = []
    with av.open(str(path)) as container:  # pull 1 frame per second: the first at or after t = k s
        stream = container.streams.video[0]
        next_t = 0.0
        for frame in container.decode(stream):
            if frame.pts is not None and float(frame.pts * stream.time_base) + 1e-6 >= next_t:
                frames.append(frame.to_ndarray(format="rgb24"))
                next_t += 1.0
    assert len(frames) == len(images)
    with Mtmd(vision_probe, llm270.model, n_threads=THREADS) as m:
        for frame, sentence in zip(frames, sentences, strict=True):
            emb = _encode_media(m, frame, llm270.n_embd())
            got, cos = _decode_full_vocab(emb[: len(sentence)], vocab_embd)
            assert got == sentence
            assert cos.min() >= MIN_COSINE
