#!/usr/bin/env bash
# Install falcon-desktop on Linux or WSL into its own virtual environment, with the torch build that matches this
# machine's NVIDIA driver (or the CPU build when there is none). Needs no root. Re-running it upgrades in place.
#
#   bash install.sh                 install or upgrade
#   bash install.sh --uninstall     remove the virtual environment and the launcher (your runs are kept)
#   bash install.sh --help          every option
#
# The torch build is chosen by Python (`python -m falcon_desktop.torch_build`), which is unit-tested; this script
# only runs it. So falcon-desktop is installed first without dependencies, the chooser picks torch's index, torch
# is installed from there, and only then falcon-desktop's other dependencies (torch is already satisfied).
set -euo pipefail

readonly LAUNCHER_MARKER="# written by falcon-desktop's install.sh"
readonly MIN_MINOR=10 MAX_MINOR=13

venv_dir="${FALCON_DESKTOP_VENV:-${XDG_DATA_HOME:-$HOME/.local/share}/falcon-desktop/venv}"
bin_dir="${FALCON_DESKTOP_BIN:-$HOME/.local/bin}"
python_cmd=""
source_spec=""
torch_spec="torch"
torch_spec_given=0
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
  --python PATH           Python 3.$MIN_MINOR-3.$MAX_MINOR (64-bit) to build the environment from (default: the first found)
  --source SPEC           what to install: a checkout directory, a wheel, or a pip requirement
                          (default: the checkout this script sits in, else falcon-desktop from PyPI)
  --cpu                   install the CPU build of torch even when an NVIDIA driver is present
  --index-url URL         install torch from this package index instead of the one chosen for your driver
  --torch-spec SPEC       pip requirement for torch (e.g. torch==2.7.1); without --index-url or --cpu it is
                          resolved from pip's own configured indexes, and no PyTorch index is added
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
            --torch-spec) need_value "$@"; torch_spec="$2"; torch_spec_given=1; shift ;;
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

is_supported_python() {
    "$1" -c "import struct, sys; sys.exit(0 if (3, $MIN_MINOR) <= sys.version_info[:2] <= (3, $MAX_MINOR) \
and struct.calcsize('P') == 8 else 1)" >/dev/null 2>&1
}

find_python() {
    if [ -n "$python_cmd" ]; then
        command -v "$python_cmd" >/dev/null 2>&1 || die "no Python at '$python_cmd'."
        is_supported_python "$python_cmd" ||
            die "'$python_cmd' is not a 64-bit Python 3.$MIN_MINOR-3.$MAX_MINOR." "Pass another one with --python."
        return
    fi
    local candidate
    for candidate in python3 python3.12 python3.13 python3.11 python3.10 python; do
        if command -v "$candidate" >/dev/null 2>&1 && is_supported_python "$candidate"; then
            python_cmd="$candidate"
            return
        fi
    done
    die "no 64-bit Python 3.$MIN_MINOR-3.$MAX_MINOR found on PATH." \
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

venv_pip() { "$venv_python" -m pip "$@"; }

# The checkout this script sits in; nothing when it runs from a pipe or as a lone copy.
script_checkout() {
    local script_path="${BASH_SOURCE[0]:-}" checkout
    [ -f "$script_path" ] || return 0
    checkout="$(cd "$(dirname "$script_path")/.." && pwd)" || return 0
    if [ -f "$checkout/pyproject.toml" ] && grep -q '^name = "falcon-desktop"' "$checkout/pyproject.toml"; then
        printf '%s\n' "$checkout"
    fi
}

# Sets `package`: what pip installs for falcon-desktop. A checkout is built into a wheel once, so the
# dependency-free install and the full install below take the same build.
resolve_source() {
    if [ -z "$source_spec" ]; then
        source_spec="$(script_checkout)"
        source_spec="${source_spec:-falcon-desktop}"
    fi
    if [ -d "$source_spec" ]; then
        say "Building falcon-desktop from $source_spec"
        work_dir="$(mktemp -d)"
        # setuptools builds in <checkout>/build and never removes modules deleted from the source, so a wheel built
        # there can carry stale files: build in the temporary directory instead.
        printf '[build]\nbuild_base = %s/build\n' "$work_dir" >"$work_dir/build.cfg"
        DIST_EXTRA_CONFIG="$work_dir/build.cfg" venv_pip wheel --quiet --no-deps --wheel-dir "$work_dir" "$source_spec"
        package="$(find "$work_dir" -name 'falcon_desktop-*.whl' | head -n 1)"
        [ -n "$package" ] || die "building '$source_spec' produced no falcon-desktop wheel."
    else
        package="$source_spec"
    fi
}

# Prints "INDEX_URL<TAB>TAG<TAB>REASON" for torch, as falcon-desktop's chooser decides it.
choose_torch_index() {
    local chooser_args=(--json)
    # No driver version means the CPU build, by the chooser's own rules.
    if [ "$force_cpu" = 1 ]; then chooser_args+=(--driver none); fi
    # WSL keeps nvidia-smi outside the default PATH.
    PATH="$PATH:/usr/lib/wsl/lib" "$venv_python" -m falcon_desktop.torch_build "${chooser_args[@]}" |
        "$venv_python" -c 'import json, sys; b = json.load(sys.stdin); print(b["index_url"], b["tag"], b["reason"], sep="\t")'
}

# pip keeps an installed torch whose version sorts higher, so switching builds (CUDA -> CPU) needs it gone first.
remove_other_torch_build() {
    local tag="$1" installed
    installed="$("$venv_python" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null || true)"
    case "$installed" in
        *+*) if [ "${installed#*+}" != "$tag" ]; then
            say "Replacing torch $installed with the $tag build"
            venv_pip uninstall --yes torch
        fi ;;
    esac
}

install_torch() {
    if [ "$torch_spec_given" = 1 ] && [ -z "$index_url" ] && [ "$force_cpu" = 0 ]; then
        say "Installing $torch_spec from pip's configured indexes (--torch-spec)"
        venv_pip install --upgrade "$torch_spec"
        return
    fi
    local url="$index_url" tag reason choice
    if [ -z "$url" ]; then
        choice="$(choose_torch_index)" || die "falcon-desktop could not choose a torch build." \
            "Pass --cpu, or --index-url with one of PyTorch's indexes (https://pytorch.org/get-started/locally/)."
        IFS=$'\t' read -r url tag reason <<<"$choice"
        say "torch build: $tag ($reason)"
        remove_other_torch_build "$tag"
    fi
    say "Installing $torch_spec from $url"
    venv_pip install --upgrade "$torch_spec" --index-url "$url"
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
        *":$bin_dir:"*) next_command="falcon-desktop doctor" ;;
        *)
            warn "$bin_dir is not on your PATH. Add it, e.g.: echo 'export PATH=\"$bin_dir:\$PATH\"' >> ~/.bashrc"
            next_command="$(sh_quote "$launcher") doctor"
            ;;
    esac
}

report_installed() {
    "$venv_dir/bin/falcon-desktop" --version
    "$venv_python" -c 'import torch; print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")' ||
        warn "torch does not import; run the launcher's \`doctor\` for details."
}

do_install() {
    find_python
    check_venv_module
    create_or_reuse_venv
    venv_pip install --quiet --upgrade pip
    resolve_source
    say "Installing falcon-desktop without its dependencies, to choose the torch build"
    venv_pip install --quiet --upgrade --force-reinstall --no-deps "$package"
    install_torch
    say "Installing falcon-desktop and its other dependencies"
    venv_pip install --upgrade "$package"
    write_launcher
    report_installed
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
