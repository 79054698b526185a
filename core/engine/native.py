"""llama.cpp's native side: where its logs go. Installed once per process, before anything native runs."""

from __future__ import annotations

import ctypes
import sys
from typing import Any

_state: dict[str, Any] = {"verbose": False, "callbacks": []}


def quiet_native_logs(verbose: bool | None = None) -> None:
    """Route llama.cpp, ggml and mtmd logs to stderr when verbose, else drop them.

    The callback reads the flag at call time, so a later `-v` takes effect without reinstalling.
    """
    if verbose is not None:
        _state["verbose"] = verbose
    if _state["callbacks"]:
        return
    import llama_cpp
    from llama_cpp import mtmd_cpp

    @llama_cpp.llama_log_callback
    def _log(level: int, text: bytes | None, user_data: Any) -> None:
        if _state["verbose"] and text:
            sys.stderr.write(text.decode("utf-8", "replace"))

    _state["callbacks"].append(_log)  # ctypes callbacks must outlive every native call
    llama_cpp.llama_log_set(_log, ctypes.c_void_p(0))
    mtmd_cpp.mtmd_helper_log_set(_log, ctypes.c_void_p(0))
