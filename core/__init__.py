"""gemmapipe.core: the typed library under the command line.

Nothing here imports Typer or Rich; heavy modules (numpy, av, llama_cpp) are imported lazily by
the functions that need them so that importing the package stays cheap.
"""
