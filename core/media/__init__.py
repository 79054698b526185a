"""Media input: open a path or stdin, sniff it, decode audio (16 kHz mono float32), frames and images.

Modules: source (open_input, Source), probe (probe, MediaInfo), audio (iter_audio, read_audio),
frames (iter_frames), image (load_image), geometry (fit_size, tokens_for).  Importing this package is
cheap: numpy, PyAV and Pillow are imported by the functions that need them.
"""
