"""Shell completion: what the scripts in completions/ get back when Tab is pressed.

The scripts (written by docgen from the templates below) run `gemmapipe` with
_GEMMAPIPE_COMPLETE=complete_<shell> and the command line in the environment: bash and fish send the
line up to the cursor (_GEMMAPIPE_COMPLETE_LINE), zsh its words and the index of the one under the
cursor (_GEMMAPIPE_COMPLETE_WORDS, one a line; _GEMMAPIPE_COMPLETE_CWORD). The answer is one
candidate a line, `type,value` (bash), `type,value<TAB>help` (fish) or three lines type, value, help
(zsh, as Click's own script reads them); the type is `plain`, or `file`/`dir` to let the shell
complete paths itself.

Only Click's parser runs: no command callback, no config file, nothing heavy imported, no output on
stderr (a Tab must never print an error into the command line).
"""

import os
import re
import sys
from typing import Any

ENV = "_GEMMAPIPE_COMPLETE"
SHELLS = ("bash", "zsh", "fish")

# Parameters whose values are paths although they are typed `str` (`-` means stdin or stdout);
# Path-typed ones (-m, --mmproj, --score) are found by their type (Typer's Path completes nothing).
FILE_PARAMS = {"inputs", "input", "output", "files_from", "attach"}
DIR_PARAMS = {"output_dir"}

_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")


def split_line(line: str) -> tuple[list[str], str]:
    """The complete words after the program's name, and the one being typed ('' after a space)."""
    from typer._click.shell_completion import split_arg_string

    words = split_arg_string(line)
    while words and _ASSIGNMENT.match(words[0]):  # `FOO=1 gemmapipe ...`
        words.pop(0)
    args = words[1:]
    if args and not (line[-1:].isspace() and not line.endswith("\\ ")):
        return args[:-1], args[-1]
    return args, ""


def _request(shell: str, environ: Any) -> tuple[list[str], str]:
    if shell == "zsh":
        from typer._click.shell_completion import split_arg_string

        # zsh hands its words as typed (quotes included): take each one's value as the shell would
        words = [" ".join(split_arg_string(w)) for w in environ.get(f"{ENV}_WORDS", "").split("\n")]
        cword = int(environ.get(f"{ENV}_CWORD", "0") or 0)
        return words[1:cword], (words[cword] if cword < len(words) else "")
    return split_line(environ.get(f"{ENV}_LINE", ""))


def candidates(cli: Any, args: list[str], incomplete: str) -> list[Any]:
    """Click's completion items for the word being typed, with paths marked for the shell."""
    from typer._click.core import Parameter
    from typer._click.shell_completion import CompletionItem, _resolve_context, _resolve_incomplete

    ctx = _resolve_context(cli, {}, "gemmapipe", list(args))
    obj, incomplete = _resolve_incomplete(ctx, list(args), incomplete)
    if isinstance(obj, Parameter):
        path_type = obj.type if hasattr(obj.type, "file_okay") else None
        if obj.name in DIR_PARAMS or (path_type is not None and not path_type.file_okay):
            return [CompletionItem(incomplete, type="dir")]
        if obj.name in FILE_PARAMS or path_type is not None:
            return [CompletionItem(incomplete, type="file")]
    return list(obj.shell_complete(ctx, incomplete))


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split())


def format_item(shell: str, item: Any) -> str:
    if shell == "bash":
        return f"{item.type},{item.value}"
    if shell == "fish":
        help_text = _one_line(item.help)
        return f"{item.type},{item.value}" + (f"\t{help_text}" if help_text else "")

    def esc(text: str) -> str:  # _describe splits value from help at the first unescaped colon
        return text.replace("\\", "\\\\").replace(":", "\\:")

    return f"{item.type}\n{esc(str(item.value))}\n{esc(_one_line(item.help)) or '_'}"


def complete(cli: Any, instruction: str, environ: Any = None) -> int:
    """Answer one completion request (the value of _GEMMAPIPE_COMPLETE) on stdout."""
    environ = os.environ if environ is None else environ
    shell = instruction.removeprefix("complete_")
    if shell not in SHELLS:
        return 2
    try:
        args, incomplete = _request(shell, environ)
        items = candidates(cli, args, incomplete)
    except Exception:  # an unparsable line completes to nothing rather than to a traceback
        items = []
    sys.stdout.write("".join(format_item(shell, item) + "\n" for item in items))
    return 0


def one_of(values: list[str]) -> str:
    """The metavar of an option taking one of `values`: [a|b|c]."""
    return "[" + "|".join(values) + "]"


def choices(values: list[str], *, multiple: bool = False) -> Any:
    """An `autocompletion` callback offering `values`; with `multiple`, after a comma as well."""

    def offer(incomplete: str) -> list[str]:
        head, comma, _ = incomplete.rpartition(",")
        prefix = head + comma if multiple else ""
        return [prefix + v for v in values]

    return offer


BASH = r"""# bash completion for gemmapipe. Generated by `python -m gemmapipe.cli.docgen`; do not edit.
# Use: source this file (or put it in ~/.local/share/bash-completion/completions/gemmapipe).
_gemmapipe_completion() {
    local IFS=$'\n' line value
    local -a reply=()
    for line in $(_GEMMAPIPE_COMPLETE=complete_bash _GEMMAPIPE_COMPLETE_LINE="${COMP_LINE:0:COMP_POINT}" \
                  "$1" 2>/dev/null); do
        value=${line#*,}
        case ${line%%,*} in
            plain) printf -v value '%q' "$value"; reply+=("$value") ;;
            file) compopt -o default 2>/dev/null; COMPREPLY=(); return 0 ;;
            dir) compopt -o dirnames 2>/dev/null; COMPREPLY=(); return 0 ;;
        esac
    done
    COMPREPLY=("${reply[@]}")
    return 0
}
complete -o nosort -F _gemmapipe_completion gemmapipe
"""

ZSH = r"""#compdef gemmapipe
# zsh completion for gemmapipe. Generated by `python -m gemmapipe.cli.docgen`; do not edit.
# Use: put this file, named _gemmapipe, in a directory on $fpath before compinit (or source it).
_gemmapipe() {
    local -a response plain described
    local kind value descr
    response=("${(@f)$(_GEMMAPIPE_COMPLETE=complete_zsh _GEMMAPIPE_COMPLETE_WORDS="${(pj:\n:)words}" \
                       _GEMMAPIPE_COMPLETE_CWORD=$((CURRENT - 1)) ${words[1]} 2>/dev/null)}")
    for kind value descr in "${response[@]}"; do
        case $kind in
            plain)
                if [[ $descr == _ ]]; then plain+=("$value"); else described+=("$value:$descr"); fi ;;
            file) _path_files -f ;;
            dir) _path_files -/ ;;
        esac
    done
    (( ${#described} )) && _describe -V unsorted described -U
    (( ${#plain} )) && compadd -U -V unsorted -Q -a plain
    return 0
}
if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
    _gemmapipe "$@"
else
    compdef _gemmapipe gemmapipe
fi
"""

FISH = r"""# fish completion for gemmapipe. Generated by `python -m gemmapipe.cli.docgen`; do not edit.
# Use: copy this file to ~/.config/fish/completions/gemmapipe.fish (or source it).
function __gemmapipe_complete
    set -lx _GEMMAPIPE_COMPLETE complete_fish
    set -lx _GEMMAPIPE_COMPLETE_LINE (commandline -cp | string collect)
    for line in (command gemmapipe 2>/dev/null)
        set -l item (string split -m 1 , -- $line)
        switch $item[1]
            case plain
                printf '%s\n' $item[2]
            case file
                __fish_complete_path (commandline -ct)
            case dir
                __fish_complete_directories (commandline -ct) ''
        end
    end
end
complete -c gemmapipe -f -a '(__gemmapipe_complete)'
"""

SCRIPTS = {"bash": BASH, "zsh": ZSH, "fish": FISH}
