"""Generate man/gemmapipe.1 (one page, a section per subcommand) and the bash/zsh/fish completion
scripts from the Typer app itself, so they cannot drift from the options.

    python -m gemmapipe.cli.docgen [REPO_ROOT]     # rewrite man/ and completions/
    python -m gemmapipe.cli.docgen --check ROOT    # exit 1 if any is stale (tests run this)

Options, their metavars, defaults, ranges and panels come from the same Click tree that `--help`
renders (app.click_app); the prose sections (chat commands, sessions, files, environment, examples)
are below, next to nothing else that could say them differently.
"""

import re
import sys
from pathlib import Path
from typing import Any

SHELLS = {"bash": "gemmapipe.bash", "zsh": "_gemmapipe", "fish": "gemmapipe.fish"}

# /commands of the interactive chat; chat.HELP_INTERACTIVE names the ones there are
SLASH_HELP = {
    "/attach": "Attach an image, audio or video file (or an http(s) URL) to the next message; Tab completes paths.",
    "/reset": "Forget the conversation so far (and the model's cached state).",
    "/save": "Save the conversation to FILE (JSON); gemmapipe chat --session FILE continues it.",
    "/help": "List the commands.",
    "/exit": "Leave (as does Ctrl-D). Ctrl-C clears the line at the prompt, and stops an answer midway "
             "(marked [interrupted]; the part shown stays in the conversation) without ending the session. "
             "An unknown /command is named as such.",
}

# Variables read outside Click's options (those are listed with their option and below, from envvar=)
ENVIRONMENT = [
    ("GEMMAPIPE_CONFIG", "The config file to read instead of $XDG_CONFIG_HOME/gemmapipe/config.toml."),
    ("GEMMAPIPE_MODELS_DIR", "Where `models pull` puts models and where the default is looked for "
                             "(default: $XDG_DATA_HOME/gemmapipe/models)."),
    ("GEMMAPIPE_TRACEBACK", "Set to 1 to show tracebacks on errors (as --traceback)."),
    ("GEMMAPIPE_VIDEO_THREADS",
     "Video decoders working at once, each from its own keyframe (default: the usable cores, at most 8)."),
    ("GEMMAPIPE_AUDIO_PROCS", "Helper processes decoding long audio files (0: none, all in the calling process)."),
    ("GEMMAPIPE_AUDIO_SNDFILE",
     "Set to 0 to decode long MP3 files with FFmpeg (PyAV) instead of libsndfile in parallel pieces."),
    ("GEMMAPIPE_NO_REPACK", "Set to 1 to keep llama.cpp's plain CPU weight layout (no repacking, hence no AMX "
                            "kernels): for hosts that die with SIGILL at the first matrix multiply."),
    ("GEMMAPIPE_SPOOL_MAX", "Most bytes of standard input copied to a temporary file in $TMPDIR (default 4G; bytes, "
                            "or with a K, M, G or T suffix, binary); a larger input is refused with exit status 3."),
    ("GEMMAPIPE_FAULT_SIGNAL", "For tests: STAGE[:SIG[:SECONDS]] sends SIG (default INT) to the process SECONDS "
                               "after a stage starts (load, prefill, decode, media, spool)."),
    ("HF_TOKEN, HF_ENDPOINT", "Hugging Face token and endpoint for `models pull`, as the Hub's own tools use them."),
    ("HF_HUB_OFFLINE", "Set to 1 to never touch the network (as `models pull --offline`)."),
    ("XDG_CONFIG_HOME, XDG_DATA_HOME, XDG_CACHE_HOME",
     "Base directories of the files below (default: ~/.config, ~/.local/share, ~/.cache)."),
]

FILES = [
    ("$XDG_CONFIG_HOME/gemmapipe/config.toml",
     "Defaults for every option, named as on the command line (dashes or underscores); a table named after a "
     "subcommand, such as [transcribe], overrides the top level for it. Precedence: flag > environment > "
     "config file > built-in."),
    ("$XDG_DATA_HOME/gemmapipe/models/", "Models fetched by `gemmapipe models pull`, one folder per repository."),
    ("$XDG_DATA_HOME/gemmapipe/sessions/NAME.json",
     "Saved chat conversations (`chat --session NAME`, listed by `chat --list`); last.json is the one "
     "`chat --continue` picks up; NAME.files/ beside one keeps the bytes of attachments read from stdin or a URL."),
    ("$XDG_DATA_HOME/gemmapipe/history", "Line history of the interactive chat."),
    ("$XDG_CACHE_HOME/gemmapipe/", "Caches that are safe to delete: prefilled video states (states/), model "
                                   "checksums (sha256.json)."),
]

SUBTITLES = [
    "srt and vtt (transcribe, diarize) follow the common subtitle guidelines: at most 42 characters a line "
    "(--max-line-width; East Asian wide characters count two) and 2 lines a cue (--max-line-count), lines "
    "balanced and broken after a sentence or clause where they can; at most 7 s a cue; a cue shorter than its "
    "reading time at 20 characters a second, or than 1 s, stays on screen into the pause after it, never past "
    "the next cue; no cue of zero length, no overlap.",
    "Cue times come from the audio: for these formats clips are cut at pauses of 300 ms or more and at most 8 s, "
    "so each clip is a cue or two; only a clip whose text needs several cues is split inside, in proportion to "
    "characters at word boundaries. A diarized cue starts with [S1] in SRT and is a voice span, <v S1>text, "
    "in WebVTT.",
    "Several formats come from one model pass: -f srt,vtt,json (or -f all) with --output-dir DIR writes "
    "<stem>.<ext> for each; stdout and -o FILE hold one format.",
]

SESSIONS = [
    "Every chat, one-shot or interactive, is saved as the conversation named last; `gemmapipe chat --continue "
    "PROMPT` goes on from it, from any folder. `--session NAME` keeps a conversation under NAME between runs "
    "(created on first use, continued after); `--session PATH` (with a / or ending in .json) uses that file, "
    "such as one written by /save FILE. --continue and --session together are refused. Attachments stay part "
    "of the conversation: files by absolute path, stdin and URLs by content, copied into NAME.files/ beside "
    "the session file. `gemmapipe chat --list` lists the kept conversations, newest first: name, time, turns "
    "and the first prompt (tab-separated in a pipe, with a header row on a terminal).",
]

EXAMPLES = [
    ("Transcribe a talk to subtitles:", "gemmapipe transcribe -o talk.srt talk.mp3"),
    ("Subtitles in two formats and the whole transcript, from one pass:",
     "gemmapipe transcribe -f srt,vtt,json --output-dir subs/ talk.mp3"),
    ("German speech, a folder of files, one transcript per input:",
     "gemmapipe transcribe -l de --output-dir out/ *.wav"),
    ("Who spoke when, with known names:", "gemmapipe diarize --names Alice,Bob -f rttm meeting.wav"),
    ("Ask about an image, answer as JSON following a schema:",
     "gemmapipe describe -p 'How many people?' --schema schema.json photo.jpg"),
    ("Summarise a video (frames and audio together):", "gemmapipe video -p 'Summarise this.' clip.mp4"),
    ("Pipe text in, attach a file:", "git diff | gemmapipe chat -a screenshot.png 'Does this match?'"),
    ("Let the model call the Python functions of a file, asking before each call:",
     "gemmapipe chat --functions tools.py --tools-approve 'How many words are in notes.txt?'"),
    ("Fetch the default model once, then see where it is:", "gemmapipe models pull && gemmapipe models path"),
    ("Use a running llama-server instead of a local GGUF:",
     "gemmapipe chat --server http://localhost:8080 'Say hello.'"),
]


def _esc(text: str) -> str:
    text = " ".join(str(text).split())
    text = text.replace("\\", "\\\\").replace("-", "\\-")
    text = re.sub(r"`([^`]+)`", r"\\fB\1\\fR", text)  # `a command` in bold
    return "\\&" + text if text.startswith((".", "'")) else text


def _tp(term: str, body: str) -> list[str]:
    return [".TP", f"\\fB{_esc(term)}\\fR", _esc(body)]


def _usage(cmd: Any, ctx: Any) -> str:
    return " ".join(p for p in cmd.collect_usage_pieces(ctx) if p != "[OPTIONS]")


def _command_section(path: str, cmd: Any, ctx: Any) -> list[str]:
    from .helpfmt import OWN_PANEL, panels

    lines = [f'.SH "{path.upper()}"', f".B {_esc(path)}", f"[\\fIOPTIONS\\fR] {_esc(_usage(cmd, ctx))}", ".PP",
             _esc(cmd.help or "")]
    args, groups = panels(cmd, ctx)
    for name, help_text in args:
        lines += _tp(name, help_text)
    for panel, rows in groups.items():
        if panel != OWN_PANEL:
            lines += [f'.SS "{panel} options"']
        for flag, help_text in rows:
            if flag != "-h, --help":  # every command has it; said once, in the synopsis
                lines += _tp(flag, help_text)
    return lines


def man_page() -> str:
    from gemmapipe import __version__

    from . import chat
    from .app import COMMANDS, EXIT_STATUS, click_app

    group = click_app()
    root = group.make_context("gemmapipe", [], resilient_parsing=True)
    contexts = {}
    for name in COMMANDS:
        contexts[name] = (group.commands[name], group.commands[name].make_context(name, [], parent=root,
                                                                                  resilient_parsing=True))
    models: Any = group.commands["models"]
    models_ctx = models.make_context("models", [], parent=root, resilient_parsing=True)
    for name, sub in models.commands.items():
        contexts[f"models {name}"] = (sub, sub.make_context(name, [], parent=models_ctx, resilient_parsing=True))

    lines = [
        f'.TH GEMMAPIPE 1 "" "gemmapipe {__version__}" "User Commands"',
        ".SH NAME",
        "gemmapipe \\- Gemma 4 unified multimodal model from the shell",
        ".SH SYNOPSIS",
    ]
    for name, (cmd, ctx) in contexts.items():
        lines += [f".B gemmapipe {name}", f"[\\fIOPTIONS\\fR] {_esc(_usage(cmd, ctx))}", ".br"]
    lines += [".B gemmapipe", "\\-\\-version | \\-\\-help", ".SH DESCRIPTION", _esc(group.help or ""), ".PP",
              _esc("Results go to stdout (or -o FILE, written whole or not at all); progress, logs and the "
                   "model's thinking go to stderr. Errors are one line, gemmapipe: error: WHAT: WHY, with a "
                   "hint line where there is something to do, and a documented exit status."),
              ".PP", _esc("Options shared by the model commands are grouped as in --help: the command's own, "
                          "Output options, Model options (the local GGUF and llama.cpp) and Server options "
                          "(an OpenAI-compatible server instead of a local model).")]
    for name, (cmd, ctx) in contexts.items():
        lines += _command_section(f"gemmapipe {name}", cmd, ctx)

    lines += [".SH SUBTITLES", *(line for p in SUBTITLES for line in (_esc(p), ".PP"))][:-1]
    lines += [".SH INTERACTIVE CHAT",
              _esc("gemmapipe chat with no prompt, stdin and stdout on a terminal, starts a conversation: "
                   "each line is a message, answers stream as Markdown. Lines starting with / are commands:")]
    for item in chat.HELP_INTERACTIVE.split(", "):
        word = item.split()[0]
        lines += _tp(item, SLASH_HELP.get(word, ""))
    lines += [".SH SESSIONS", *(_esc(p) for p in SESSIONS)]

    lines += [".SH ENVIRONMENT"]
    seen = set()
    for cmd, _ctx in contexts.values():
        for p in cmd.params:
            envvar = getattr(p, "envvar", None)
            if isinstance(envvar, str) and envvar not in seen:
                seen.add(envvar)
                lines += _tp(envvar, f"Default of {'/'.join(p.opts)}: {getattr(p, 'help', '') or ''}")
    for name, text in ENVIRONMENT:
        lines += _tp(name, text)
    lines += [".SH FILES"]
    for name, text in FILES:
        lines += _tp(name, text)
    lines += [".SH EXIT STATUS"]
    for code, text in EXIT_STATUS.items():
        lines += _tp(str(code), text)
    lines += [".SH EXAMPLES"]
    for text, command in EXAMPLES:
        lines += [".PP", _esc(text), ".RS", ".nf", _esc(command), ".fi", ".RE"]
    lines += [".SH SEE ALSO", "The README, and the completions/ folder: bash, zsh and fish completion scripts."]
    return "\n".join(lines) + "\n"


def completion(shell: str) -> str:
    from .completion import SCRIPTS

    return SCRIPTS[shell]


def outputs(root: Path) -> dict[Path, str]:
    files = {root / "man" / "gemmapipe.1": man_page()}
    for shell, name in SHELLS.items():
        files[root / "completions" / name] = completion(shell)
    return files


def main(argv: list[str]) -> int:
    check = "--check" in argv
    rest = [a for a in argv if a != "--check"]
    root = Path(rest[0]) if rest else Path.cwd()
    stale = []
    for path, text in outputs(root).items():
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        if check:
            stale.append(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}", file=sys.stderr)
    if stale:
        print("stale: " + ", ".join(stale) + " (run: python -m gemmapipe.cli.docgen)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
