"""Engines turn an ordered list of parts (text, image, audio) into a stream of text."""
