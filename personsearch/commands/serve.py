"""`personsearch serve`: the search page and JSON API over a gallery index."""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import secrets

from personsearch.commands._pipeline import add_pipeline_argument
from personsearch.errors import ConfigError
from personsearch.serve.allocator import tune_allocator

COMMAND = "serve"
HELP = "serve a web page and JSON API to search a gallery index by drawing a box"
DESCRIPTION = """\
Serve the gallery index --index on http://HOST:PORT/: upload a picture (or pick a gallery image),
drag a box around a person, and browse the ranked scenes. The JSON API is described at /docs
(OpenAPI schema at /openapi.json). Use the same --pipeline that built the index (none for the
baseline); --run is a deprecated alias of --pipeline.

Safe by default: it listens on 127.0.0.1 only. To listen on another address, give an access
token (--token, or the PERSONSEARCH_TOKEN environment variable, or --token generate); the
printed link carries it in its #fragment, which browsers never send to the server. --insecure
serves a non-loopback address without a token: anyone who can reach it can search the gallery.

example:
  personsearch serve --index gallery.index
  personsearch serve --index gallery.index --host 0.0.0.0 --token generate
"""

TOKEN_ENV = "PERSONSEARCH_TOKEN"
MIN_TOKEN_LENGTH = 8
MAX_DECODE_WAIT_S = 600.0


def positive_number(text: str) -> float:
    """argparse type: a positive, finite number (not nan, inf, 0 or negative)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", required=True, metavar="INDEX", help="gallery index folder")
    add_pipeline_argument(parser, "the trained pipeline folder that built the index")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument(
        "--token",
        metavar="TOKEN",
        help=f"access token the API requires ('generate': a random one; default ${TOKEN_ENV})",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback --host without a token (anyone reaching it can search)",
    )
    parser.add_argument(
        "--max-upload-mb",
        type=positive_number,
        default=10.0,
        metavar="MB",
        help="upload limit (10)",
    )
    parser.add_argument(
        "--max-megapixels",
        type=positive_number,
        default=40.0,
        metavar="MP",
        help="largest upload in megapixels, checked before decoding (40)",
    )
    parser.add_argument(
        "--decode-budget-mp",
        type=positive_number,
        default=100.0,
        metavar="MP",
        help="megapixels decoded at once over all requests; bounds the server's memory (100)",
    )
    parser.add_argument(
        "--decode-wait-s",
        type=positive_number,
        default=3.0,
        metavar="S",
        help="longest wait for the decode budget before answering 503 + Retry-After (3)",
    )
    parser.add_argument("--access-log", action="store_true", help="log every request")


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def resolve_token(args: argparse.Namespace) -> str | None:
    """The access token from --token or the environment; refuse an unsafe combination."""
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None
    if token == "generate":
        token = secrets.token_urlsafe(24)
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(f"the access token must be at least {MIN_TOKEN_LENGTH} characters long")
    if token is None and not is_loopback(args.host) and not args.insecure:
        raise ConfigError(
            f"--host {args.host} is reachable from other machines: give an access token "
            f"(--token generate, --token TOKEN or ${TOKEN_ENV}), or --insecure to serve "
            "without one"
        )
    return token


def run(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be between 1 and 65535, got {args.port}")
    upload_bytes = _whole(args.max_upload_mb * 1024 * 1024, "--max-upload-mb", "byte")
    max_pixels = _whole(args.max_megapixels * 1e6, "--max-megapixels", "pixel")
    budget_pixels = _whole(args.decode_budget_mp * 1e6, "--decode-budget-mp", "pixel")
    if not 0 < args.decode_wait_s <= MAX_DECODE_WAIT_S:
        raise ConfigError(
            f"--decode-wait-s must be at most {MAX_DECODE_WAIT_S:g} seconds, got "
            f"{args.decode_wait_s:g}"
        )
    token = resolve_token(args)
    try:
        import uvicorn
    except ModuleNotFoundError as error:
        raise ConfigError(
            f"`personsearch serve` needs the web extras ({error.name} is missing): "
            "pip install 'personsearch[serve]'"
        ) from None
    from personsearch.serve.app import create_app
    from personsearch.serve.limits import ServeLimits
    from personsearch.serve.middleware import LOOPBACK_HOSTS

    limits = ServeLimits(
        max_upload_bytes=upload_bytes,
        max_pixels=max_pixels,
        decode_budget_pixels=budget_pixels,
        decode_wait_s=args.decode_wait_s,
    )
    tune_allocator()  # freed image buffers go back to the system, not to malloc's arenas
    # On loopback, Host headers other than loopback names are refused (DNS rebinding); on
    # another address the token is what guards the API.
    allowed_hosts = (*LOOPBACK_HOSTS, args.host) if is_loopback(args.host) else None
    app = create_app(
        args.index, args.pipeline, token=token, limits=limits, allowed_hosts=allowed_hosts
    )
    shown_host = f"[{args.host}]" if ":" in args.host else args.host
    if args.host in ("0.0.0.0", "::"):
        shown_host = "<this-machine's-address>"
    link = f"http://{shown_host}:{args.port}/" + (f"#token={token}" if token else "")
    print(f"personsearch: serving {args.index} at {link}", flush=True)
    if token is None and not is_loopback(args.host):
        print("warning: no access token: anyone who can reach this address can search", flush=True)
    print("API docs at /docs; press Ctrl+C to stop", flush=True)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="info" if args.access_log else "warning",
        access_log=args.access_log,
        server_header=False,
    )
    return 0


def _whole(value: float, option: str, unit: str) -> int:
    """A limit in whole units (bytes, pixels): at least one, and not absurdly large."""
    if value < 1:
        raise ConfigError(f"{option} gives {value:g} {unit}s: it must allow at least one {unit}")
    if value > 2**53:
        raise ConfigError(f"{option} gives {value:g} {unit}s: that is not a limit; give less")
    return int(value)
