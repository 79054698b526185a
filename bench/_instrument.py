"""Run one gemmapipe command in this interpreter with timing hooks, and write what they saw as JSON.

    GEMMAPIPE_BENCH_T0=<CLOCK_MONOTONIC ns at launch> python bench/_instrument.py REPORT.json -- ARGS...

It does what the `gemmapipe` console script does (`gemmapipe.cli.app.run(ARGS)`), after wrapping:

- llama.cpp's and libmtmd's native entry points (attributes of the ctypes binding modules, which the
  engine looks up at call time): model/context/projector loading, `llama_decode`,
  sampling, media encoding and evaluation, KV state get/set. Their time is the *model's own* time;
  everything else is gemmapipe (and Python).
- `LocalEngine.__init__`, `generate` (time of the call, of the first text piece handed to the
  caller, and the engine's own stats), `prefill`, `save_state`/`load_state`.

All times are CLOCK_MONOTONIC, which is shared by every process on Linux, so the parent's launch
instant (GEMMAPIPE_BENCH_T0) and this process's instants are on one clock. Only the wrapper's
own import of the bindings happens earlier than it would in the real command (the command imports
them anyway when it loads the model), so the sum is unchanged.
"""

import time

T_SCRIPT = time.monotonic_ns()

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

NATIVE_LOAD = ("llama_model_load_from_file", "llama_init_from_model", "mtmd_init_from_file")
NATIVE_COMPUTE = ("llama_decode", "llama_sampler_sample", "mtmd_helper_eval_chunk_single", "mtmd_encode_chunk",
                  "mtmd_tokenize")
NATIVE_STATE = ("llama_state_seq_get_data", "llama_state_seq_set_data")


def now() -> int:
    return time.monotonic_ns()


class Recorder:
    def __init__(self) -> None:
        self.native: dict[str, float] = {}  # name -> total ns
        self.calls: dict[str, int] = {}
        self.native_total = 0
        self.native_load = 0
        self.native_compute = 0
        self.native_state = 0
        self.first_piece: int | None = None
        self.native_before_first = 0
        self.native_compute_before_first = 0
        self.native_load_before_first = 0
        self.requests: list[dict[str, object]] = []
        self.engine_inits: list[dict[str, int]] = []
        self.states: list[dict[str, object]] = []
        self.marks: dict[str, int] = {}

    def wrap_native(self, module: object, name: str, group: str) -> None:
        fn = getattr(module, name, None)
        if fn is None:
            return
        rec = self

        def timed(*args: object, **kwargs: object) -> object:
            t = now()
            try:
                return fn(*args, **kwargs)
            finally:
                dt = now() - t
                rec.native[name] = rec.native.get(name, 0) + dt
                rec.calls[name] = rec.calls.get(name, 0) + 1
                rec.native_total += dt
                if group == "load":
                    rec.native_load += dt
                elif group == "compute":
                    rec.native_compute += dt
                else:
                    rec.native_state += dt

        setattr(module, name, timed)


REC = Recorder()


def binding_modules() -> tuple[object, object]:
    """The module objects the engine calls llama.cpp and libmtmd through: gemmapipe's own light
    `bindings()` (llama_cpp.llama_cpp and llama_cpp.mtmd_cpp, loaded without the package's heavy
    __init__) when it has one, else the llama_cpp package itself."""
    try:
        from gemmapipe.core.engine.native import bindings
    except ImportError:
        bindings = None
    if bindings is not None:
        return bindings()
    import llama_cpp
    from llama_cpp import mtmd_cpp

    return llama_cpp, mtmd_cpp


def install() -> None:
    llama, mtmd = binding_modules()
    for name in NATIVE_LOAD:
        REC.wrap_native(mtmd if name.startswith("mtmd") else llama, name, "load")
    for name in NATIVE_COMPUTE:
        REC.wrap_native(mtmd if name.startswith("mtmd") else llama, name, "compute")
    for name in NATIVE_STATE:
        REC.wrap_native(llama, name, "state")
    REC.marks["hooks_installed"] = now()

    from gemmapipe.core.engine import local

    cls = local.LocalEngine
    orig_init, orig_generate, orig_cached = cls.__init__, cls.generate, cls.generate_cached
    orig_save, orig_load, orig_prefill = cls.save_state, cls.load_state, cls.prefill

    def init(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        t, n0 = now(), REC.native_load
        try:
            return orig_init(self, *args, **kwargs)
        finally:
            REC.engine_inits.append({"start": t, "end": now(), "native_load_ns": REC.native_load - n0})

    def generate(self, messages, options, orig=orig_generate):  # type: ignore[no-untyped-def]
        t_call = now()
        c0, l0, s0 = REC.native_compute, REC.native_load, REC.native_state
        it = orig(self, messages, options)
        if it is None:  # generate_cached: the saved state does not fit the prompt
            return None
        entry: dict[str, object] = {"call": t_call, "prepared": now(), "stats_prefill": dict(self.stats.as_dict())}
        REC.requests.append(entry)

        def stream():  # type: ignore[no-untyped-def]
            first = True
            for piece in it:
                if first:
                    first = False
                    entry["first_piece"] = now()
                    entry["native_compute_to_first_ns"] = REC.native_compute - c0
                    if REC.first_piece is None:
                        REC.first_piece = entry["first_piece"]  # type: ignore[assignment]
                        REC.native_before_first = REC.native_total
                        REC.native_compute_before_first = REC.native_compute
                        REC.native_load_before_first = REC.native_load
                yield piece
            entry["done"] = now()
            entry["stats"] = dict(self.stats.as_dict())
            entry["native_compute_ns"] = REC.native_compute - c0
            entry["native_state_ns"] = REC.native_state - s0
            entry["native_load_ns"] = REC.native_load - l0

        return stream()

    def save_state(self):  # type: ignore[no-untyped-def]
        t = now()
        state = orig_save(self)
        REC.states.append({"op": "save", "start": t, "end": now(), "bytes": len(state.kv)})
        return state

    def load_state(self, state):  # type: ignore[no-untyped-def]
        t = now()
        ok = False
        try:
            orig_load(self, state)
            ok = True
        finally:
            REC.states.append({"op": "load", "start": t, "end": now(), "bytes": len(state.kv), "ok": ok})

    def prefill(self, messages, options):  # type: ignore[no-untyped-def]
        t = now()
        n = orig_prefill(self, messages, options)
        REC.states.append({"op": "prefill", "start": t, "end": now(), "bytes": 0, "tokens": n,
                           "prefill_s": self.stats.prefill_s if n is not None else 0.0,
                           "evaluated": self.stats.prompt_evaluated if n is not None else 0})
        return n

    def generate_cached(self, messages, options):  # type: ignore[no-untyped-def]
        return generate(self, messages, options, orig=orig_cached)

    cls.__init__, cls.generate, cls.save_state, cls.load_state = init, generate, save_state, load_state
    cls.generate_cached, cls.prefill = generate_cached, prefill


def main() -> int:
    argv = sys.argv[1:]
    report = argv[0]
    args = argv[argv.index("--") + 1:] if "--" in argv else argv[1:]
    t0 = int(os.environ.get("GEMMAPIPE_BENCH_T0", T_SCRIPT))
    install()
    REC.marks["app_import_start"] = now()
    from gemmapipe.cli.app import run
    from gemmapipe.cli.signals import install_signal_handlers

    REC.marks["app_imported"] = now()
    install_signal_handlers()
    code = run(args)
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        pass
    t_end = now()

    def rel(t: int | None) -> float | None:
        return None if t is None else (t - t0) / 1e9

    out = {
        "rc": code,
        "args": args,
        "script_start_s": rel(T_SCRIPT),
        "marks_s": {k: rel(v) for k, v in REC.marks.items()},
        "end_s": rel(t_end),
        "first_piece_s": rel(REC.first_piece),
        "native_s": {k: v / 1e9 for k, v in REC.native.items()},
        "native_calls": REC.calls,
        "native_total_s": REC.native_total / 1e9,
        "native_load_s": REC.native_load / 1e9,
        "native_compute_s": REC.native_compute / 1e9,
        "native_state_s": REC.native_state / 1e9,
        "native_before_first_s": REC.native_before_first / 1e9,
        "native_load_before_first_s": REC.native_load_before_first / 1e9,
        "native_compute_before_first_s": REC.native_compute_before_first / 1e9,
        "engine_inits": [{"start_s": rel(e["start"]), "end_s": rel(e["end"]),
                          "native_load_s": e["native_load_ns"] / 1e9}
                         for e in REC.engine_inits],
        "requests": [
            {"call_s": rel(r["call"]), "first_piece_s": rel(r.get("first_piece")), "done_s": rel(r.get("done")),  # type: ignore[arg-type]
             "stats": r.get("stats") or r["stats_prefill"],
             "native_compute_s": r.get("native_compute_ns", 0) / 1e9,  # type: ignore[operator]
             "native_compute_to_first_s": r.get("native_compute_to_first_ns", 0) / 1e9,  # type: ignore[operator]
             "native_state_s": r.get("native_state_ns", 0) / 1e9}  # type: ignore[operator]
            for r in REC.requests
        ],
        "states": [{**s, "start": rel(s["start"]), "end": rel(s["end"])} for s in REC.states],  # type: ignore[arg-type]
    }
    with open(report, "w") as fh:
        json.dump(out, fh, indent=1)
    return code


if __name__ == "__main__":
    sys.exit(main())
