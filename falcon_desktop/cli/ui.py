"""`falcon-desktop ui`: the whole flow in a local web app - machine check, plan, train, runs, ask.

Starts a server on 127.0.0.1 and opens the browser on it. The address carries a random token for this session;
other pages, other machines and other host names are refused. Training runs in its own process: closing the page
or stopping the UI (Ctrl-C) leaves it running, and the next UI reattaches to it.
"""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  falcon-desktop ui
  falcon-desktop ui --no-browser --port 8765
  falcon-desktop ui --root D:/datasets --root D:/models
"""


def register(subparsers: argparse._SubParsersAction, formatter: type[argparse.HelpFormatter]) -> None:
    parser = subparsers.add_parser("ui", help="the whole flow in a local web app", description=__doc__,
                                   epilog=EXAMPLES, formatter_class=formatter)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on; anything but 127.0.0.1 exposes the UI beyond this machine")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: any free port)")
    parser.add_argument("--root", action="append", metavar="FOLDER", default=None,
                        help="a folder the file picker may list (repeatable; default: the current folder and the "
                             "falcon-desktop home)")
    parser.add_argument("--no-browser", action="store_true", help="print the address instead of opening a browser")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from falcon_desktop.errors import UserError
    from falcon_desktop.paths import home
    from falcon_desktop.pip_commands import install_command

    try:
        from falcon_desktop.ui.server import UiSettings, serve
    except ImportError as error:
        raise UserError(f"The UI needs packages that are not installed ({error.name}).",
                        f"Install them: {install_command('falcon-desktop[ui]')}") from None
    roots = tuple(Path(root).expanduser() for root in args.root) if args.root else (Path.cwd(), home())
    missing = [str(root) for root in roots if not root.is_dir()]
    if missing:
        raise UserError(f"--root {missing[0]} is not a folder.", "Give folders that exist.")
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be between 0 and 65535, not {args.port}.", "Leave it out for any free port.")
    settings = UiSettings(host=args.host, port=args.port, roots=roots, open_browser=not args.no_browser)

    def announce(url: str) -> None:
        print(f"falcon-desktop UI: {url}", flush=True)
        print("Training runs keep going if you close this; Ctrl-C stops the UI.", flush=True)

    try:
        serve(settings, announce)
    except OSError as error:
        raise UserError(f"Cannot listen on {args.host}:{args.port} ({error.strerror or error}).",
                        "Pick another --port, or leave it out for any free one.") from None
    return 0
