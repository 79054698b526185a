"""gemmapipe.cli: the thin Typer layer over gemmapipe.core."""
