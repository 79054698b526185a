"""The audio the model hears, in one place: 16 kHz mono float32 in [-1, 1], read in 640-sample
windows (40 ms), one token each (gemma4ua; see GEMMA4-NOTES)."""

SAMPLE_RATE = 16_000
WINDOW = 640  # samples per audio token
TOKENS_PER_SECOND = SAMPLE_RATE // WINDOW  # 25
MAX_CLIP_S = 30  # the longest clip the model is documented for (750 tokens)
