"""The console page's serving options, written once: `telesurg console` and the web_console
node take them alike, and `telesurg demo --console` and the launch files use their defaults.
Pure Python (argparse only)."""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_BIND = "127.0.0.1"  # this machine only
DEFAULT_PORT = 8080
MIN_TOKEN_CHARS = 16


def tcp_port(text: str) -> int:
    """An argparse type: a TCP port, 0 for any free one."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not in [0, 65535]")
    return value


def add_page_options(parser: argparse.ArgumentParser) -> None:
    """--bind, --port and --token-file."""
    parser.add_argument("--bind", default=DEFAULT_BIND, metavar="ADDRESS",
                        help=f"address to serve on (default {DEFAULT_BIND}, this machine only; "
                             "the browser decodes the video only on localhost or over HTTPS: "
                             "from elsewhere use an SSH tunnel)")
    parser.add_argument("--port", type=tcp_port, default=DEFAULT_PORT,
                        help=f"TCP port (default {DEFAULT_PORT}; 0 picks a free one)")
    parser.add_argument("--token-file", type=Path, default=None, metavar="FILE",
                        help=f"file holding the page's token, at least {MIN_TOKEN_CHARS} "
                             "characters (default: a new random token, printed in the URL)")


def page_url(host: str, port: int, token: str) -> str:
    """The page's address, with its token."""
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}/?token={token}"
