"""llama.cpp's native side: the ctypes bindings, loaded cheaply, and where the native logs go."""

from __future__ import annotations

import ctypes
import importlib.util
import sys
from typing import Any

from .. import interrupt
from ..errors import ModelError

_state: dict[str, Any] = {"verbose": False, "callbacks": []}


def light_package() -> None:
    """Register the `llama_cpp` package without running its __init__ (see `bindings`)."""
    if "llama_cpp" in sys.modules:
        return
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.loader is None or not spec.submodule_search_locations:
        raise ModelError("llama-cpp-python", "is not installed", "pip install llama-cpp-python")
    pkg = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        del pkg.__dict__["__getattr__"]
        loader.exec_module(pkg)
        return getattr(pkg, name)

    pkg.__getattr__ = __getattr__  # type: ignore[method-assign]
    sys.modules["llama_cpp"] = pkg


def bindings() -> tuple[Any, Any]:
    """(llama_cpp.llama_cpp, llama_cpp.mtmd_cpp): llama.cpp's and libmtmd's ctypes bindings.

    `import llama_cpp` runs the package's __init__, which also imports the high-level `Llama` class,
    its chat formats, numpy and jinja2: about 0.5 s at every start, for code we never call. We register
    the package without running __init__ and import only the two binding modules; the first access to
    any other package attribute (`llama_cpp.Llama`) runs the real __init__ then (PEP 562), so code that
    wants the high-level API still gets it.
    """
    light_package()
    import llama_cpp.llama_cpp as llama
    import llama_cpp.mtmd_cpp as mtmd

    return llama, mtmd


def quiet_native_logs(verbose: bool | None = None) -> None:
    """Route llama.cpp, ggml and mtmd logs to stderr when verbose, else drop them.

    The callback reads the flag at call time, so a later `-v` takes effect without reinstalling.
    """
    if verbose is not None:
        _state["verbose"] = verbose
    if _state["callbacks"]:
        return
    llama, mtmd = bindings()

    @llama.llama_log_callback
    @interrupt.native_callback  # a signal landing here must not be swallowed by ctypes
    def _log(level: int, text: bytes | None, user_data: Any) -> None:
        if _state["verbose"] and text:
            sys.stderr.write(text.decode("utf-8", "replace"))

    _state["callbacks"].append(_log)  # ctypes callbacks must outlive every native call
    llama.llama_log_set(_log, ctypes.c_void_p(0))
    mtmd.mtmd_helper_log_set(_log, ctypes.c_void_p(0))
