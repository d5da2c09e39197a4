"""Repair commands that can be pasted as they are: this environment's own interpreter, quoted for the user's shell.

An installer user has only the `falcon-desktop` launcher on PATH; a bare `python` there is the system one, or on
Windows the Microsoft Store stub, so every printed command names `sys.executable`. Windows users are told to paste
into PowerShell (`& "C:\\...\\python.exe" -m pip ...`); elsewhere the command is POSIX shell (shlex.quote).

Standard library only: the installers import it (through torch_build) before anything else is installed.
"""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Sequence

POWERSHELL, POSIX = "powershell", "posix"

# Characters PowerShell reads literally in a bare argument; anything else is quoted.
_POWERSHELL_BARE = re.compile(r"[A-Za-z0-9_\-+=.,:/\\]+")


def default_shell(platform: str = sys.platform) -> str:
    return POWERSHELL if platform == "win32" else POSIX


def quote(argument: str, shell: str) -> str:
    """`argument` as one word of `shell`."""
    if shell == POSIX:
        return shlex.quote(argument)
    if _POWERSHELL_BARE.fullmatch(argument):
        return argument
    if not any(char in argument for char in '$`"'):
        return f'"{argument}"'
    return "'" + argument.replace("'", "''") + "'"  # single quotes: nothing inside is expanded


def command_line(argv: Sequence[str], shell: str | None = None) -> str:
    """`argv` as one line of `shell`; PowerShell runs a quoted program path only through the call operator `&`."""
    shell = shell or default_shell()
    words = [quote(argument, shell) for argument in argv]
    if shell == POWERSHELL:
        words[0] = "& " + (words[0] if words[0].startswith(("'", '"')) else f'"{argv[0]}"')
    return " ".join(words)


def python_command(arguments: Sequence[str], executable: str | None = None, shell: str | None = None) -> str:
    """`<this interpreter> arguments...`, quoted for `shell`."""
    return command_line([executable or sys.executable, *arguments], shell)


def pip_command(arguments: Sequence[str], executable: str | None = None, shell: str | None = None) -> str:
    return python_command(["-m", "pip", *arguments], executable, shell)


def install_command(requirement: str, executable: str | None = None, shell: str | None = None) -> str:
    """Install or upgrade one package to `requirement`; anything already installed that satisfies its dependencies
    (torch above all) is left alone, because pip only upgrades what the requirement needs."""
    return pip_command(["install", requirement], executable, shell)


def reinstall_command(distribution: str, version: str | None, executable: str | None = None,
                      shell: str | None = None) -> str:
    """Reinstall one package's files, nothing else: `--no-deps`, or pip re-resolves torch from PyPI (on Windows the
    CPU build) and removes the CUDA one."""
    requirement = f"{distribution}=={version}" if version else distribution
    return pip_command(["install", "--force-reinstall", "--no-deps", requirement], executable, shell)
