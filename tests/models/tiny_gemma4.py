"""A tiny, random-weight Gemma 4 "unified" pair (text GGUF + mmproj GGUF) that llama.cpp loads.

Why: the real Gemma 4 12B is ~7 GB; tests need something that exercises exactly the same code paths in
llama-cpp-python 0.3.36 (llama.cpp architecture ``gemma4``, mtmd projectors ``gemma4uv`` and ``gemma4ua``,
the Gemma 4 BPE tokenizer, its special tokens and chat template) in well under a second.

Everything below was read from the vendored llama.cpp of llama-cpp-python 0.3.36:

Text model (``src/models/gemma4.cpp``, ``src/llama-model.cpp``, ``src/llama-vocab.cpp``)
    * required keys: ``gemma4.context_length``, ``.embedding_length``, ``.block_count``,
      ``.feed_forward_length``, ``.attention.head_count`` (``head_count_kv`` optional),
      ``.attention.sliding_window``, ``.attention.sliding_window_pattern`` (bool array, one per layer,
      true = sliding-window layer), ``.attention.layer_norm_rms_epsilon``,
      ``.embedding_length_per_layer_input`` (0 = no per-layer embeddings; the key itself is REQUIRED),
      ``.attention.key_length_swa`` / ``.value_length_swa`` (required). Optional but written by the
      converter: ``.attention.key_length`` / ``.value_length`` (full-attention head size),
      ``.rope.dimension_count`` / ``.rope.dimension_count_swa``, ``.rope.freq_base`` /
      ``.rope.freq_base_swa``, ``.final_logit_softcapping``, ``.attention.shared_kv_layers``.
    * head_k == head_v is required (per layer kind). The KV-reuse callback asserts
      ``n_layer - shared_kv_layers >= 2``, so at least two layers.
    * tensors per layer: attn_norm, attn_q, attn_k, attn_v (optional: K is reused as V without it),
      attn_output, attn_q_norm, attn_k_norm (head-size vectors), post_attention_norm, ffn_norm,
      ffn_gate, ffn_up, ffn_down, post_ffw_norm; global: token_embd, output_norm (output optional,
      tied to token_embd), ``rope_freqs`` (REQUIRED as soon as one full-attention layer exists:
      the "proportional" RoPE factors, 1.0 for rotated pairs and 1e30 for unrotated ones).
    * Gemma 4 norms are NOT "1 + w" (the converter's norm_shift is 0), so unit weights are identity.
    * raw embedding inputs (images/audio) are not scaled by sqrt(n_embd); token embeddings are.

Tokenizer (``tokenizer.ggml.model = "gemma4"``)
    * a BPE vocabulary on raw UTF-8 (no GPT-2 byte mapping), spaces become U+2581 before merging,
      the only pre-split is on newlines, unknown characters fall back to ``<0xXX>`` byte tokens.
      ``tokenizer.ggml.merges`` is REQUIRED (any list; llama.cpp throws without the key).
    * ``add_bos`` is forced true for Gemma 4; EOG tokens are found by text: ``<eos>``, ``<turn|>``,
      ``<|tool_response>``.
    * the converter marks ``<|channel>``, ``<channel|>``, ``<|tool_call>``, ``<tool_call|>``,
      ``<|tool_response>``, ``<tool_response|>``, ``<|"|>`` USER_DEFINED (always rendered) and the
      other specials CONTROL. ``tokenizer.ggml.suppress_tokens`` (INT32 array) comes from the HF
      ``generation_config.json``; we write one so the engine's handling of it can be tested.

Projector (``tools/mtmd/clip.cpp``, ``models/gemma4uv.cpp``, ``models/gemma4ua.cpp``)
    * see :func:`write_gemma4_mmproj`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: Bump when anything written by this module changes (the pytest cache rebuilds on change).
BUILDER_VERSION = 4

N_EMBD = 64
N_HEAD = 2
N_HEAD_KV = 1
HEAD_DIM_FULL = 32
HEAD_DIM_SWA = 16
N_FF = 128
N_CTX_TRAIN = 4096
SLIDING_WINDOW = 128
SWA_PATTERN = (True, True, True, False)  # three sliding-window layers, then one full-attention layer
RMS_EPS = 1e-6
SOFTCAP = 30.0
PARTIAL_ROTARY_FULL = 0.25  # Gemma 4 full-attention layers rotate a quarter of each head ("proportional")

# GGUF token types (llama.cpp LLAMA_TOKEN_TYPE_*)
TT_NORMAL, TT_UNKNOWN, TT_CONTROL, TT_USER_DEFINED, TT_UNUSED, TT_BYTE = 1, 2, 3, 4, 5, 6

#: special tokens, in id order, with their token type (the first ids match the real Gemma vocabulary:
#: 0 <pad>, 1 <eos>, 2 <bos>, 3 <unk>, 4 <mask>)
SPECIAL_TOKENS: tuple[tuple[str, int], ...] = (
    ("<pad>", TT_CONTROL),
    ("<eos>", TT_CONTROL),
    ("<bos>", TT_CONTROL),
    ("<unk>", TT_UNKNOWN),
    ("<mask>", TT_CONTROL),
    ("<|turn>", TT_CONTROL),
    ("<turn|>", TT_CONTROL),
    ("<|image>", TT_CONTROL),
    ("<image|>", TT_CONTROL),
    ("<|audio>", TT_CONTROL),
    ("<audio|>", TT_CONTROL),
    ("<|image|>", TT_CONTROL),  # soft-token placeholders of the HF processor (never produced by mtmd)
    ("<|audio|>", TT_CONTROL),
    ("<|think|>", TT_CONTROL),
    ("<|channel>", TT_USER_DEFINED),
    ("<channel|>", TT_USER_DEFINED),
    ("<|tool_call>", TT_USER_DEFINED),
    ("<tool_call|>", TT_USER_DEFINED),
    ("<|tool_response>", TT_USER_DEFINED),
    ("<tool_response|>", TT_USER_DEFINED),
    ('<|"|>', TT_USER_DEFINED),
)

#: tokens the (real) converter would list in tokenizer.ggml.suppress_tokens: media markers and
#: placeholders must never be sampled.
SUPPRESSED_TOKENS = ("<mask>", "<|image>", "<image|>", "<|audio>", "<audio|>", "<|image|>", "<|audio|>")

#: a handful of BPE merges (left, right); every merged string is added to the vocabulary.
MERGES: tuple[tuple[str, str], ...] = (
    ("\u2581", "t"),
    ("h", "e"),
    ("\u2581t", "he"),
    ("i", "n"),
    ("e", "r"),
    ("o", "n"),
    ("a", "n"),
    ("\u2581", "a"),
    ("r", "e"),
    ("\u2581", "i"),
    ("\u2581i", "s"),
    ("\u2581", "o"),
    ("\u2581o", "f"),
)

#: A small Jinja template in Gemma 4's turn format. ``<bos>`` then, per message,
#: ``<|turn>{role}\n{content}<turn|>\n`` (``assistant`` is written ``model``); a system turn gets
#: ``<|think|>`` when ``enable_thinking`` is true. The generation prompt is ``<|turn>model\n``; with
#: thinking off it also carries an empty thought channel, as the real template does.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- set thinking = enable_thinking is defined and enable_thinking -%}"
    "{%- if thinking and (messages | length == 0 or messages[0]['role'] != 'system') -%}"
    "{{ '<|turn>system\\n<|think|><turn|>\\n' }}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<|turn>' + role + '\\n' }}"
    "{%- if role == 'system' and thinking -%}{{ '<|think|>' }}{%- endif -%}"
    "{%- if message['content'] is string -%}"
    "{{ message['content'] | trim }}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{ part['text'] | trim }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{ '<turn|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|turn>model\\n' }}"
    "{%- if not thinking -%}{{ '<|channel>thought\\n<channel|>' }}{%- endif -%}"
    "{%- endif -%}"
)


def build_vocab() -> tuple[list[str], list[int], list[str]]:
    """Return (tokens, token_types, merges) of the tiny Gemma 4 vocabulary.

    Layout: the special tokens, the 256 byte-fallback tokens ``<0x00>``..``<0xFF>``, newline runs,
    ``▁`` (the escaped space) and every printable ASCII character, then the merge results. Any text
    tokenizes: ASCII through the character tokens, everything else through the byte tokens.
    """
    tokens: list[str] = []
    types: list[int] = []
    for text, ttype in SPECIAL_TOKENS:
        tokens.append(text)
        types.append(ttype)
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        types.append(TT_BYTE)
    singles = ["\n", "\n\n", "\u2581"] + [chr(c) for c in range(33, 127)]
    for s in singles:
        tokens.append(s)
        types.append(TT_NORMAL)
    merges = []
    for left, right in MERGES:
        merged = left + right
        if merged not in tokens:
            tokens.append(merged)
            types.append(TT_NORMAL)
        merges.append(f"{left} {right}")
    assert len(set(tokens)) == len(tokens)
    return tokens, types, merges


def _rope_freqs() -> np.ndarray:
    """Gemma 4 "proportional" RoPE for full-attention layers, as the converter writes it.

    ggml's NEOX rope can only rotate the leading pairs, so the unrotated pairs get a frequency
    factor of 1e30 (the angle becomes ~0, i.e. no rotation).
    """
    n_rot = int(HEAD_DIM_FULL * PARTIAL_ROTARY_FULL / 2)
    n_unrot = HEAD_DIM_FULL // 2 - n_rot
    return np.array([1.0] * n_rot + [1e30] * n_unrot, dtype=np.float32)


def _add_layout_keys(w: Any, arch: str, n_embd: int, swa_pattern: Sequence[bool]) -> None:
    """The shape keys the text model and its assistant share (the attention sizes must match: the
    assistant reads the model's KV cache)."""
    w.add_uint32(f"{arch}.context_length", N_CTX_TRAIN)
    w.add_uint32(f"{arch}.embedding_length", n_embd)
    w.add_uint32(f"{arch}.block_count", len(swa_pattern))
    w.add_uint32(f"{arch}.feed_forward_length", N_FF)
    w.add_uint32(f"{arch}.attention.head_count", N_HEAD)
    w.add_uint32(f"{arch}.attention.head_count_kv", N_HEAD_KV)
    w.add_uint32(f"{arch}.attention.key_length", HEAD_DIM_FULL)
    w.add_uint32(f"{arch}.attention.value_length", HEAD_DIM_FULL)
    w.add_uint32(f"{arch}.attention.key_length_swa", HEAD_DIM_SWA)
    w.add_uint32(f"{arch}.attention.value_length_swa", HEAD_DIM_SWA)
    w.add_uint32(f"{arch}.rope.dimension_count", HEAD_DIM_FULL)
    w.add_uint32(f"{arch}.rope.dimension_count_swa", HEAD_DIM_SWA)
    w.add_float32(f"{arch}.rope.freq_base", 1_000_000.0)
    w.add_float32(f"{arch}.rope.freq_base_swa", 10_000.0)
    w.add_uint32(f"{arch}.attention.sliding_window", SLIDING_WINDOW)
    w.add_array(f"{arch}.attention.sliding_window_pattern", list(swa_pattern))
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", RMS_EPS)
    w.add_uint32(f"{arch}.attention.shared_kv_layers", 0)


def _add_tokenizer(w: Any, tokens: list[str], types: list[int], merges: list[str], chat_template: str) -> None:
    """The tokenizer keys shared by the text model and its assistant."""
    n_vocab = len(tokens)
    w.add_string("tokenizer.ggml.model", "gemma4")
    w.add_string("tokenizer.ggml.pre", "gemma4")
    w.add_array("tokenizer.ggml.tokens", tokens)
    w.add_array("tokenizer.ggml.scores", [0.0] * n_vocab)
    w.add_array("tokenizer.ggml.token_type", types)
    w.add_array("tokenizer.ggml.merges", merges)
    w.add_uint32("tokenizer.ggml.bos_token_id", tokens.index("<bos>"))
    w.add_uint32("tokenizer.ggml.eos_token_id", tokens.index("<eos>"))
    w.add_uint32("tokenizer.ggml.unknown_token_id", tokens.index("<unk>"))
    w.add_uint32("tokenizer.ggml.padding_token_id", tokens.index("<pad>"))
    w.add_bool("tokenizer.ggml.add_bos_token", True)
    w.add_bool("tokenizer.ggml.add_eos_token", False)
    w.add_bool("tokenizer.ggml.add_space_prefix", False)
    w.add_array("tokenizer.ggml.suppress_tokens", [tokens.index(t) for t in SUPPRESSED_TOKENS])
    w.add_string("tokenizer.chat_template", chat_template)


def write_tiny_gemma4_text(path: Path, *, seed: int = 0, chat_template: str = CHAT_TEMPLATE) -> Path:
    """Write the random-weight ``gemma4`` text GGUF to ``path`` (F32 tensors, ~1 MB); another
    ``chat_template`` (one that declares tools, say) gives the same weights another template."""
    import gguf

    rng = np.random.default_rng(seed)
    tokens, types, merges = build_vocab()
    n_vocab = len(tokens)

    def rnd(*shape: int, scale: float = 0.05) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w = gguf.GGUFWriter(str(path), "gemma4")
    arch = "gemma4"
    w.add_string("general.name", "tiny-random-gemma4-unified")
    _add_layout_keys(w, arch, N_EMBD, SWA_PATTERN)
    w.add_uint32(f"{arch}.embedding_length_per_layer_input", 0)
    w.add_float32(f"{arch}.final_logit_softcapping", SOFTCAP)

    _add_tokenizer(w, tokens, types, merges, chat_template)

    # tensors (numpy shapes are ggml ne reversed)
    ones = lambda n: np.ones(n, dtype=np.float32)  # noqa: E731
    w.add_tensor("token_embd.weight", rnd(n_vocab, N_EMBD, scale=0.5))
    w.add_tensor("output_norm.weight", ones(N_EMBD))
    # An untied output matrix: with tied embeddings a random model mostly predicts its own last input
    # token (after the chat template, an endless `<channel|>`), so its answers would be empty text.
    w.add_tensor("output.weight", rnd(n_vocab, N_EMBD, scale=0.5))
    w.add_tensor("rope_freqs.weight", _rope_freqs())
    for il, is_swa in enumerate(SWA_PATTERN):
        hd = HEAD_DIM_SWA if is_swa else HEAD_DIM_FULL
        p = f"blk.{il}"
        w.add_tensor(f"{p}.attn_norm.weight", ones(N_EMBD))
        w.add_tensor(f"{p}.attn_q.weight", rnd(N_HEAD * hd, N_EMBD))
        w.add_tensor(f"{p}.attn_k.weight", rnd(N_HEAD_KV * hd, N_EMBD))
        w.add_tensor(f"{p}.attn_v.weight", rnd(N_HEAD_KV * hd, N_EMBD))
        w.add_tensor(f"{p}.attn_output.weight", rnd(N_EMBD, N_HEAD * hd))
        w.add_tensor(f"{p}.attn_q_norm.weight", ones(hd))
        w.add_tensor(f"{p}.attn_k_norm.weight", ones(hd))
        w.add_tensor(f"{p}.post_attention_norm.weight", ones(N_EMBD))
        w.add_tensor(f"{p}.ffn_norm.weight", ones(N_EMBD))
        w.add_tensor(f"{p}.ffn_gate.weight", rnd(N_FF, N_EMBD))
        w.add_tensor(f"{p}.ffn_up.weight", rnd(N_FF, N_EMBD))
        w.add_tensor(f"{p}.ffn_down.weight", rnd(N_EMBD, N_FF))
        w.add_tensor(f"{p}.post_ffw_norm.weight", ones(N_EMBD))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


#: The assistant (MTP drafter, llama.cpp architecture ``gemma4-assistant``): wider than the target, as
#: llama.cpp requires its width to differ from the target's (``embedding_length_out``).
ASSISTANT_EMBD = 128
ASSISTANT_SWA_PATTERN = (True, False)  # its layers read the target's last sliding and last full layer


def write_tiny_gemma4_assistant(path: Path, target: Path, *, seed: int = 0) -> Path:
    """Write a ``gemma4-assistant`` GGUF for ``target``, a model of :func:`write_tiny_gemma4_text`.

    What ``src/models/gemma4-assistant.cpp`` of llama-cpp-python 0.3.36 reads: the keys of a Gemma 4
    text model plus ``embedding_length_out`` (the target's width, which must differ from its own) and
    ``nextn_predict_layers`` (= ``block_count``: every layer is a drafting layer); tensors
    ``nextn.pre_projection`` (own width x 2 target widths: applied to [target token embedding * sqrt(64),
    target hidden state]), per layer a query projection but no K/V (attention reads the target's KV
    cache: sliding layers its last sliding layer, full layers its last layer), ``layer_output_scale``,
    the output (its tied ``token_embd``) and ``nextn.post_projection`` (back to the target's width: the
    hidden state the next draft step gets).

    Not random: its weights make it a bigram predictor of the target. The pre-projection passes the
    target's scaled token embedding through (and drops the hidden state), the layers add only a weak
    attention term (the shared KV cache must be read, and matter a little), and its output matrix is
    the target's, zero-padded. Since the tiny target's residual stream is dominated by the token
    embedding, the assistant guesses the target's next token right often but not always: a test sees
    both accepted drafts and rollbacks.
    """
    import gguf

    tokens, types, merges = build_vocab()
    n_vocab = len(tokens)
    reader = gguf.GGUFReader(str(target))
    out_target = next(np.asarray(t.data, dtype=np.float32) for t in reader.tensors if t.name == "output.weight")
    assert out_target.shape == (n_vocab, N_EMBD)
    rng = np.random.default_rng(seed + 7)

    def rnd(*shape: int, scale: float = 0.05) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    arch = "gemma4-assistant"
    w = gguf.GGUFWriter(str(path), arch)
    w.add_string("general.name", "tiny-random-gemma4-assistant")
    _add_layout_keys(w, arch, ASSISTANT_EMBD, ASSISTANT_SWA_PATTERN)
    w.add_uint32(f"{arch}.embedding_length_out", N_EMBD)
    w.add_uint32(f"{arch}.nextn_predict_layers", len(ASSISTANT_SWA_PATTERN))
    _add_tokenizer(w, tokens, types, merges, CHAT_TEMPLATE)

    ones = lambda n: np.ones(n, dtype=np.float32)  # noqa: E731
    zeros = lambda *shape: np.zeros(shape, dtype=np.float32)  # noqa: E731
    embd = zeros(n_vocab, ASSISTANT_EMBD)
    embd[:, :N_EMBD] = out_target
    w.add_tensor("token_embd.weight", embd)
    w.add_tensor("output_norm.weight", ones(ASSISTANT_EMBD))
    pre = zeros(ASSISTANT_EMBD, 2 * N_EMBD)
    pre[:N_EMBD, :N_EMBD] = np.eye(N_EMBD, dtype=np.float32)
    w.add_tensor("nextn.pre_projection.weight", pre)
    post = zeros(N_EMBD, ASSISTANT_EMBD)
    post[:, :N_EMBD] = np.eye(N_EMBD, dtype=np.float32)
    w.add_tensor("nextn.post_projection.weight", post)
    w.add_tensor("rope_freqs.weight", _rope_freqs())
    for il, is_swa in enumerate(ASSISTANT_SWA_PATTERN):
        hd = HEAD_DIM_SWA if is_swa else HEAD_DIM_FULL
        p = f"blk.{il}"
        w.add_tensor(f"{p}.attn_norm.weight", ones(ASSISTANT_EMBD))
        w.add_tensor(f"{p}.attn_q.weight", rnd(N_HEAD * hd, ASSISTANT_EMBD))
        w.add_tensor(f"{p}.attn_output.weight", rnd(ASSISTANT_EMBD, N_HEAD * hd))
        w.add_tensor(f"{p}.attn_q_norm.weight", ones(hd))
        w.add_tensor(f"{p}.post_attention_norm.weight", np.full(ASSISTANT_EMBD, 0.05, dtype=np.float32))
        w.add_tensor(f"{p}.layer_output_scale.weight", ones(1))
        w.add_tensor(f"{p}.ffn_norm.weight", ones(ASSISTANT_EMBD))
        w.add_tensor(f"{p}.ffn_gate.weight", rnd(N_FF, ASSISTANT_EMBD))
        w.add_tensor(f"{p}.ffn_up.weight", rnd(N_FF, ASSISTANT_EMBD))
        w.add_tensor(f"{p}.ffn_down.weight", zeros(ASSISTANT_EMBD, N_FF))
        w.add_tensor(f"{p}.post_ffw_norm.weight", ones(ASSISTANT_EMBD))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# --------------------------------------------------------------------------------------------------
# mmproj
# --------------------------------------------------------------------------------------------------

#: gemma4uv: GGUF patch_size 16 times the hard-coded merge 3 = 48 px effective patches.
PATCH_SIZE_GGUF = 16
N_MERGE = 3
PATCH = PATCH_SIZE_GGUF * N_MERGE
AUDIO_FRAME = 640  # gemma4ua: samples per token at 16 kHz (hard-coded in clip.cpp)


def write_gemma4_mmproj(
    path: Path,
    *,
    n_embd_text: int,
    vision: dict[str, np.ndarray] | None,
    audio: dict[str, np.ndarray] | None,
    image_mean: Sequence[float] = (0.5, 0.5, 0.5),
    image_std: Sequence[float] = (0.5, 0.5, 0.5),
    eps: float = 1e-6,
    extra_kv: dict[str, object] | None = None,
) -> Path:
    """Write a Gemma 4 unified mmproj with a ``gemma4uv`` and/or ``gemma4ua`` projector.

    What clip.cpp needs (llama-cpp-python 0.3.36):

    * ``general.architecture = "clip"``; ``clip.has_vision_encoder`` / ``clip.has_audio_encoder``.
    * with both modalities ``clip.projector_type`` must be ABSENT and the per-modality
      ``clip.vision.projector_type = "gemma4uv"`` / ``clip.audio.projector_type = "gemma4ua"`` are
      used; with one modality either form works (we always write the per-modality key).
    * per modality (prefix ``clip.vision`` / ``clip.audio``) these u32/f32 keys are REQUIRED even though
      the encoder-free projectors have no transformer: ``embedding_length``, ``feed_forward_length``,
      ``block_count`` (MUST be 0, otherwise per-layer tensors are required), ``attention.head_count``,
      ``projection_dim``, ``attention.layer_norm_epsilon``.
    * vision also needs ``clip.vision.image_size`` (unused, 224), ``clip.vision.patch_size`` (16; clip.cpp
      multiplies it by the merge factor 3, read from the optional ``clip.vision.projector.scale_factor``),
      ``clip.vision.image_mean`` / ``image_std`` (3 floats each; pixels are ``(u8/255 - mean)/std``).
      The vision LayerNorm eps is hard-coded 1e-5; ``attention.layer_norm_epsilon`` is the eps of the
      RMSNorm before ``mm.input_projection``.
    * audio needs ``clip.audio.num_mel_bins`` (read, then overridden: gemma4ua forces 640 samples per
      frame, 16 kHz, RMSNorm eps 1e-6).

    ``vision`` tensors (numpy shapes, i.e. ggml ne reversed; all F32):

    * ``v.patch_norm.1.weight`` / ``.bias``: (48*48*3,) LayerNorm over the raw patch in ggml im2col
      order, which is CHW (all R of the patch row-major, then all G, then all B);
    * ``v.patch_embd.weight``: (n_embd_v, 6912) and ``v.patch_embd.bias``: (n_embd_v,);
    * ``v.patch_norm.2.*``: (n_embd_v,) LayerNorm;
    * ``v.position_embd.weight``: (2, n_pos, n_embd_v): row table for x (column index) then y (row
      index), added before ``v.patch_norm.3.*`` (the "pos_norm"). NOT bounds-checked by llama.cpp:
      n_pos must exceed the number of patches along either side of any image you feed;
    * ``mm.input_projection.weight``: (n_embd_text, n_embd_v), after a weightless RMSNorm.

    ``audio`` tensors: ``mm.a.input_projection.weight``: (n_embd_text, 640), applied to the
    weightless-RMSNorm-ed raw 640-sample frame.
    """
    import gguf

    if vision is None and audio is None:
        raise ValueError("need at least one modality")
    w = gguf.GGUFWriter(str(path), "clip")
    w.add_string("general.type", "mmproj")
    w.add_string("general.name", "gemmapipe test mmproj")
    w.add_uint32("general.file_type", 0)  # all F32
    if vision is not None:
        n_embd_v = int(vision["v.patch_embd.weight"].shape[0])
        w.add_bool("clip.has_vision_encoder", True)
        w.add_string("clip.vision.projector_type", "gemma4uv")
        w.add_uint32("clip.vision.embedding_length", n_embd_v)
        w.add_uint32("clip.vision.feed_forward_length", 0)
        w.add_uint32("clip.vision.block_count", 0)
        w.add_uint32("clip.vision.attention.head_count", 0)
        w.add_uint32("clip.vision.projection_dim", n_embd_text)
        w.add_float32("clip.vision.attention.layer_norm_epsilon", eps)
        w.add_uint32("clip.vision.image_size", 224)
        w.add_uint32("clip.vision.patch_size", PATCH_SIZE_GGUF)
        w.add_array("clip.vision.image_mean", [float(x) for x in image_mean])
        w.add_array("clip.vision.image_std", [float(x) for x in image_std])
    if audio is not None:
        w.add_bool("clip.has_audio_encoder", True)
        w.add_string("clip.audio.projector_type", "gemma4ua")
        w.add_uint32("clip.audio.embedding_length", AUDIO_FRAME)
        w.add_uint32("clip.audio.feed_forward_length", 0)
        w.add_uint32("clip.audio.block_count", 0)
        w.add_uint32("clip.audio.attention.head_count", 0)
        w.add_uint32("clip.audio.projection_dim", n_embd_text)
        w.add_float32("clip.audio.attention.layer_norm_epsilon", eps)
        w.add_uint32("clip.audio.num_mel_bins", AUDIO_FRAME)
    for key, value in (extra_kv or {}).items():
        if isinstance(value, str):
            w.add_string(key, value)
        elif isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, int):
            w.add_int32(key, value)
        elif isinstance(value, float):
            w.add_float32(key, value)
        else:
            w.add_array(key, list(value))  # type: ignore[call-overload]
    for tensors in (vision, audio):
        for name, arr in (tensors or {}).items():
            w.add_tensor(name, np.ascontiguousarray(arr, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def random_vision_tensors(
    rng: np.random.Generator, n_embd_v: int, n_embd_text: int, n_pos: int = 64
) -> dict[str, np.ndarray]:
    """Random ``gemma4uv`` tensors (unit LayerNorms, small random linear maps)."""
    n_in = PATCH * PATCH * 3

    def rnd(*shape: int, scale: float) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    return {
        "v.patch_norm.1.weight": np.ones(n_in, np.float32),
        "v.patch_norm.1.bias": np.zeros(n_in, np.float32),
        "v.patch_embd.weight": rnd(n_embd_v, n_in, scale=1.0 / np.sqrt(n_in)),
        "v.patch_embd.bias": np.zeros(n_embd_v, np.float32),
        "v.patch_norm.2.weight": np.ones(n_embd_v, np.float32),
        "v.patch_norm.2.bias": np.zeros(n_embd_v, np.float32),
        "v.position_embd.weight": rnd(2, n_pos, n_embd_v, scale=0.1),
        "v.patch_norm.3.weight": np.ones(n_embd_v, np.float32),
        "v.patch_norm.3.bias": np.zeros(n_embd_v, np.float32),
        "mm.input_projection.weight": rnd(n_embd_text, n_embd_v, scale=1.0 / np.sqrt(n_embd_v)),
    }


def random_audio_tensors(rng: np.random.Generator, n_embd_text: int) -> dict[str, np.ndarray]:
    """Random ``gemma4ua`` tensor: the 640 -> n_embd_text input projection."""
    w = rng.standard_normal((n_embd_text, AUDIO_FRAME)) / np.sqrt(AUDIO_FRAME)
    return {"mm.a.input_projection.weight": w.astype(np.float32)}


def build_tiny_gemma4(out_dir: Path, *, seed: int = 0) -> tuple[Path, Path]:
    """Build the tiny Gemma 4 pair in ``out_dir``; return ``(model_path, mmproj_path)``.

    Deterministic for a given seed. The mmproj carries both projectors, each producing
    ``N_EMBD`` (64) wide embeddings, the text model's width.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = write_tiny_gemma4_text(out_dir / "tiny-gemma4.gguf", seed=seed)
    write_tiny_gemma4_assistant(out_dir / "tiny-gemma4-assistant.gguf", model, seed=seed)
    rng = np.random.default_rng(seed + 1)
    mmproj = write_gemma4_mmproj(
        out_dir / "mmproj-tiny-gemma4.gguf",
        n_embd_text=N_EMBD,
        vision=random_vision_tensors(rng, N_EMBD, N_EMBD),
        audio=random_audio_tensors(rng, N_EMBD),
    )
    return model, mmproj
