#!/usr/bin/env bash
# Install falcon-desktop on Linux or WSL into its own virtual environment, with the torch build that matches this
# machine's NVIDIA driver (or the CPU build when there is none). Needs no root. Re-running it upgrades in place.
#
#   bash install.sh                 install or upgrade
#   bash install.sh --uninstall     remove the virtual environment and the launcher (your runs are kept)
#   bash install.sh --help          every option
#
# Every decision that can live in Python does (falcon_desktop/install_plan.py, unit-tested): which interpreter,
# the pre-flight checks, the torch build and the ordered pip steps. This script finds candidate interpreters,
# creates the virtual environment, runs those steps and writes the launcher. Torch is installed or switched
# first and only after its download succeeded, so a failure (no network, proxy) leaves the torch you had.
set -euo pipefail

readonly LAUNCHER_MARKER="# written by falcon-desktop's install.sh"

venv_dir="${FALCON_DESKTOP_VENV:-${XDG_DATA_HOME:-$HOME/.local/share}/falcon-desktop/venv}"
bin_dir="${FALCON_DESKTOP_BIN:-$HOME/.local/bin}"
python_cmd=""
source_spec=""
torch_spec=""
index_url=""
force_cpu=0
uninstall=0
system_site_packages=0

usage() {
    cat <<EOF
Usage: bash install.sh [options]

Installs falcon-desktop into a virtual environment and puts a \`falcon-desktop\` launcher on your PATH.

Options:
  --prefix DIR            virtual environment to create or upgrade
                          (default: \$FALCON_DESKTOP_VENV, else $venv_dir)
  --bin-dir DIR           where the launcher goes (default: \$FALCON_DESKTOP_BIN, else $bin_dir)
  --python PATH           64-bit Python 3.10-3.14 to build the environment from (default: the first found)
  --source PATH           what to install: a falcon-desktop checkout or wheel (default: the checkout this
                          script sits in; get one with git clone or the repository's zip)
  --cpu                   install the CPU build of torch even when an NVIDIA driver is present
  --index-url URL         install torch from this package index instead of the one chosen for your driver
  --torch-spec SPEC       pip requirement for torch, or a downloaded wheel's path; without --index-url or
                          --cpu it is resolved from pip's own configured indexes
  --system-site-packages  let the environment see the chosen Python's packages (for tests and CI)
  --uninstall             remove the environment and the launcher; runs and caches are kept
  -h, --help              this help
EOF
}

say() { printf '==> %s\n' "$*"; }
warn() { printf 'Warning: %s\n' "$*" >&2; }
die() {
    printf 'Error: %s\n' "$1" >&2
    if [ $# -gt 1 ]; then printf 'Hint: %s\n' "$2" >&2; fi
    exit 1
}

# Single-quote a string for a /bin/sh script, so any path (spaces, quotes, non-ASCII) survives.
sh_quote() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }

need_value() { [ $# -ge 2 ] || die "$1 needs a value." "Run \`bash install.sh --help\` for the options."; }

parse_args() {
    while [ $# -gt 0 ]; do
        case "$1" in
            --prefix) need_value "$@"; venv_dir="$2"; shift ;;
            --bin-dir) need_value "$@"; bin_dir="$2"; shift ;;
            --python) need_value "$@"; python_cmd="$2"; shift ;;
            --source) need_value "$@"; source_spec="$2"; shift ;;
            --index-url) need_value "$@"; index_url="$2"; shift ;;
            --torch-spec) need_value "$@"; torch_spec="$2"; shift ;;
            --cpu) force_cpu=1 ;;
            --system-site-packages) system_site_packages=1 ;;
            --uninstall) uninstall=1 ;;
            -h | --help) usage; exit 0 ;;
            *) die "unknown option '$1'." "Run \`bash install.sh --help\` for the options." ;;
        esac
        shift
    done
    if [ "$force_cpu" = 1 ] && [ -n "$index_url" ]; then
        die "--cpu and --index-url both choose torch's index." "Pass one of them."
    fi
    # The launcher records the environment's path, so it must not depend on where this script ran.
    venv_dir="$(absolute_path "$venv_dir")"
    bin_dir="$(absolute_path "$bin_dir")"
}

absolute_path() {
    case "$1" in
        /*) printf '%s\n' "$1" ;;
        *) printf '%s/%s\n' "$PWD" "$1" ;;
    esac
}

# The installer-decision module runs from the checkout (or wheel) before falcon-desktop is installed.
with_source() { PYTHONPATH="$source_spec" "$@"; }

is_supported_python() { with_source "$1" -X utf8 -m falcon_desktop.install_plan check-python 2>/dev/null; }

find_python() {
    if [ -n "$python_cmd" ]; then
        command -v "$python_cmd" >/dev/null 2>&1 || die "no Python at '$python_cmd'."
        with_source "$python_cmd" -X utf8 -m falcon_desktop.install_plan check-python || exit 1
        return
    fi
    local candidate
    for candidate in python3 python3.12 python3.13 python3.14 python3.11 python3.10 python; do
        if command -v "$candidate" >/dev/null 2>&1 && is_supported_python "$candidate"; then
            python_cmd="$candidate"
            return
        fi
    done
    die "no 64-bit Python 3.10-3.14 found on PATH." \
        "Install one (Debian/Ubuntu: sudo apt install python3 python3-venv; Fedora: sudo dnf install python3), or pass --python PATH."
}

# Debian and Ubuntu ship venv's pip bootstrap in a separate package; say so instead of failing halfway.
check_venv_module() {
    if ! "$python_cmd" -c "import ensurepip, venv" >/dev/null 2>&1; then
        local version
        version=$("$python_cmd" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
        die "$python_cmd cannot create virtual environments (the venv/ensurepip module is missing)." \
            "On Debian/Ubuntu: sudo apt install python$version-venv  (or pass another Python with --python)."
    fi
}

is_our_venv() { [ -f "$1/pyvenv.cfg" ]; }

create_or_reuse_venv() {
    venv_python="$venv_dir/bin/python"
    if is_our_venv "$venv_dir" && is_supported_python "$venv_python"; then
        say "Upgrading the environment in $venv_dir"
        return
    fi
    if [ -e "$venv_dir" ] && [ -n "$(ls -A "$venv_dir" 2>/dev/null)" ] && ! is_our_venv "$venv_dir"; then
        die "'$venv_dir' exists and is not a virtual environment; refusing to touch it." \
            "Pass an empty or new directory with --prefix."
    fi
    local venv_args=(-m venv --clear)
    if [ "$system_site_packages" = 1 ]; then venv_args+=(--system-site-packages); fi
    say "Creating a virtual environment in $venv_dir with $("$python_cmd" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
    mkdir -p "$(dirname "$venv_dir")"
    "$python_cmd" "${venv_args[@]}" "$venv_dir"
}

# The checkout this script sits in; nothing when it runs from a pipe or as a lone copy.
script_checkout() {
    local script_path="${BASH_SOURCE[0]:-}" checkout
    [ -f "$script_path" ] || return 0
    checkout="$(cd "$(dirname "$script_path")/.." && pwd)" || return 0
    if [ -f "$checkout/pyproject.toml" ] && grep -q '^name = "falcon-desktop"' "$checkout/pyproject.toml"; then
        printf '%s\n' "$checkout"
    fi
}

resolve_source() {
    if [ -z "$source_spec" ]; then source_spec="$(script_checkout)"; fi
    [ -n "$source_spec" ] || die "this script is not inside a falcon-desktop checkout, and no --source was given." \
        "Get the files first (git clone <repository URL>, or download the repository's zip and unpack it), then run installers/install.sh from there."
    [ -d "$source_spec" ] || [ -f "$source_spec" ] || die "--source '$source_spec' is neither a checkout nor a wheel."
    source_spec="$(absolute_path "$source_spec")"
}

# The installer's options for install_plan, as UTF-8 JSON (any path survives).
write_options() {
    work_dir="$(mktemp -d)"
    options_file="$work_dir/options.json"
    "$python_cmd" -X utf8 -c 'import json, sys
keys = ["prefix", "source", "work_dir", "index_url", "torch_spec"]
options = dict(zip(keys, sys.argv[2:7]), cpu=sys.argv[7] == "1", shell="posix")
open(sys.argv[1], "w", encoding="utf-8").write(json.dumps(options))' \
        "$options_file" "$venv_dir" "$source_spec" "$work_dir" "$index_url" "$torch_spec" "$force_cpu"
}

write_launcher() {
    local launcher="$bin_dir/falcon-desktop"
    if [ -e "$launcher" ] && ! grep -qF "$LAUNCHER_MARKER" "$launcher" 2>/dev/null; then
        die "'$launcher' exists and was not written by this installer; refusing to overwrite it." \
            "Remove it, or pass another directory with --bin-dir."
    fi
    mkdir -p "$bin_dir"
    # The environment's own console script: `python -m falcon_desktop` would import a falcon_desktop folder from
    # the current directory first.
    {
        printf '#!/bin/sh\n%s; remove with: bash install.sh --uninstall\n' "$LAUNCHER_MARKER"
        printf 'exec %s "$@"\n' "$(sh_quote "$venv_dir/bin/falcon-desktop")"
    } >"$launcher"
    chmod +x "$launcher"
    say "Launcher: $launcher"
    case ":$PATH:" in
        *":$bin_dir:"*) next_command="falcon-desktop demo" ;;
        *)
            warn "$bin_dir is not on your PATH. Add it, e.g.: echo 'export PATH=\"$bin_dir:\$PATH\"' >> ~/.bashrc"
            next_command="$(sh_quote "$launcher") demo"
            ;;
    esac
}

do_install() {
    resolve_source
    find_python
    check_venv_module
    write_options
    # WSL keeps nvidia-smi outside the default PATH.
    PATH="$PATH:/usr/lib/wsl/lib" with_source "$python_cmd" -X utf8 -m falcon_desktop.install_plan preflight \
        --options "$options_file" || exit 1
    create_or_reuse_venv
    PATH="$PATH:/usr/lib/wsl/lib" with_source "$venv_python" -X utf8 -m falcon_desktop.install_plan install \
        --options "$options_file" || exit 1
    write_launcher
    say "Installed. Checking the machine with \`falcon-desktop doctor\`:"
    # doctor exits 1 when something FAILs (no GPU, for one); the install itself succeeded.
    "$venv_dir/bin/falcon-desktop" doctor || true
    say "Done. next: $next_command"
}

do_uninstall() {
    local launcher="$bin_dir/falcon-desktop" removed=0
    if is_our_venv "$venv_dir"; then
        rm -rf -- "$venv_dir"
        say "Removed $venv_dir"
        removed=1
        # The data directory (runs, caches) usually holds the environment; remove it only when nothing else is left.
        rmdir -- "$(dirname "$venv_dir")" 2>/dev/null || true
    elif [ -e "$venv_dir" ]; then
        warn "'$venv_dir' is not a virtual environment; left it alone."
    fi
    if [ -f "$launcher" ] && grep -qF "$LAUNCHER_MARKER" "$launcher"; then
        rm -f -- "$launcher"
        say "Removed $launcher"
        removed=1
    fi
    if [ "$removed" = 0 ]; then say "Nothing to remove: no environment at $venv_dir, no launcher at $launcher."; fi
    say "Your runs and caches in ${FALCON_DESKTOP_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}/falcon-desktop} were kept."
}

main() {
    parse_args "$@"
    work_dir=""
    trap '[ -z "$work_dir" ] || rm -rf -- "$work_dir"' EXIT
    if [ "$uninstall" = 1 ]; then do_uninstall; else do_install; fi
}

main "$@"
