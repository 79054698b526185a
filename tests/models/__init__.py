"""Test-only model builders: a tiny random Gemma 4 pair and probe projectors for Gemma 3 270M.

Nothing here reaches the network; every file is written locally with the ``gguf`` package.
"""
