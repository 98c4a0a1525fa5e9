"""The command line, ``python -m conngrpc`` (private): the parser and the dispatch.

One module per command (``demo``, ``probe``, ``watch``); ``options`` holds what probe
and watch share. The help texts are plain text: argparse prints them as written.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
from collections.abc import Sequence

import grpc

from .. import __version__
from .demo import run_demo
from .logs import configure_logging
from .options import add_target_options, seconds, target_from
from .probe import probe
from .watch import watch

__all__ = ["main"]

DESCRIPTION = """\
conngrpc keeps pools of persistent gRPC channels, each on its own connection.
These commands try a pool, check a server through one, or watch one live.
"""

TOP_EPILOG = """\
exit codes:
  0  the command succeeded (probe: every channel SERVING; demo: it ran to its end or
     was stopped by Ctrl-C or SIGTERM; watch: stopped by Ctrl-C or SIGTERM)
  1  it failed (probe: a channel not connected or not SERVING)
  2  usage error

Run "python -m conngrpc COMMAND --help" for a command's options and exit codes.
"""

DEMO_DESCRIPTION = """\
Run a pool of 5 channels against conngrpc's test server in a child process: hand out
channels round-robin, kill the server, crash a worker, restart the server, recover.
It tells its story on stdout and ends by itself within seconds; Ctrl-C (SIGINT) or
SIGTERM stops it sooner, closing the pool and the server.
"""

PROBE_DESCRIPTION = """\
Open a pool of --pool-size channels to ADDRESS (each on its own connection, spread
over every address ADDRESS resolves to), wait up to --timeout seconds for them to
connect, then ask grpc.health.v1.Health/Check over each channel and print one row per
channel: its backend, its local address, the check's latency and the answer. Failed
connection attempts are reported on stderr as they happen; stdout carries the result
only.
"""

PROBE_EPILOG = """\
exit codes:
  0  every channel connected and its server answered SERVING (a server without the
     grpc.health.v1 service answers UNIMPLEMENTED, which counts as serving, as it does
     in a pool that health-checks its channels)
  1  a channel did not connect, or its server did not answer SERVING
  2  usage error: a bad option or address, or a certificate file that cannot be read

examples:
  python -m conngrpc probe localhost:50051
  python -m conngrpc probe api.example.com:443 --tls --json
  python -m conngrpc probe billing.internal:8443 --ca-file ca.pem --server-name api.internal \\
      --cert-file client.pem --key-file client.key
"""

WATCH_DESCRIPTION = """\
Keep a pool of --pool-size channels to ADDRESS open and print each of its events as
it happens, one line each: the time, the channel, its backend, the event and details.
The events: connected, connection_failed, disconnected, health_changed (with --health
or --service), resolved and resolve_failed (the backends ADDRESS resolves to), and
status (channels up, per backend) every --interval seconds. A channel that lost its
connection tries again after 0.5 s, backing off to 5 s. Ctrl-C (SIGINT) or SIGTERM
closes every channel and ends the command.
"""

WATCH_EPILOG = """\
exit codes:
  0  stopped by Ctrl-C (SIGINT) or SIGTERM, or whoever read stdout went away
  1  the pool stopped by itself, which is a bug (its traceback follows)
  2  usage error: a bad option or address, or a certificate file that cannot be read

examples:
  python -m conngrpc watch localhost:50051 --health
  python -m conngrpc watch api.example.com:443 --tls --json | jq .
"""


def version() -> str:
    """``conngrpc <version> (grpcio <version>, Python <version>)``."""
    return f"conngrpc {__version__} (grpcio {grpc.__version__}, Python {platform.python_version()})"


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs as written; option help wrapped at a comfortable width."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30, width=88)


def parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The parser of ``python -m conngrpc``, and each command's own."""
    top = argparse.ArgumentParser(
        prog="python -m conngrpc",
        description=DESCRIPTION,
        epilog=TOP_EPILOG,
        formatter_class=_HelpFormatter,
    )
    top.add_argument(
        "--version",
        action="version",
        version=version(),
        help="print the versions of conngrpc, grpcio and Python, and exit",
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo_parser = commands.add_parser(
        "demo",
        help="run a pool of 5 against a local server, kill the server, watch the pool heal",
        description=DEMO_DESCRIPTION,
        formatter_class=_HelpFormatter,
    )
    probe_parser = commands.add_parser(
        "probe",
        help="health-check every channel of a pool to ADDRESS, then exit",
        description=PROBE_DESCRIPTION,
        epilog=PROBE_EPILOG,
        formatter_class=_HelpFormatter,
    )
    add_target_options(
        probe_parser,
        timeout="seconds to wait for the channels to connect, and for each health check",
        service='the grpc.health.v1 service to ask about (default: "", the whole server)',
        json="print one JSON document instead of the table (default: off)",
    )
    watch_parser = commands.add_parser(
        "watch",
        help="keep a pool to ADDRESS open and print its connection events live until Ctrl-C",
        description=WATCH_DESCRIPTION,
        epilog=WATCH_EPILOG,
        formatter_class=_HelpFormatter,
    )
    add_target_options(
        watch_parser,
        timeout="seconds one connection attempt may take",
        service="health-check this grpc.health.v1 service; implies --health (default: none)",
        json="print each event as a JSON object, one a line (default: off)",
    )
    watch_parser.add_argument(
        "--health",
        action="store_true",
        help='health-check every channel (Health/Watch on --service, or "" for the whole '
        "server) and print its changes; a channel counts as up only while SERVING "
        "(default: off)",
    )
    watch_parser.add_argument(
        "--interval",
        metavar="S",
        type=seconds,
        default=5.0,
        help="seconds between status lines (default: %(default)g)",
    )
    return top, {"demo": demo_parser, "probe": probe_parser, "watch": watch_parser}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; the exit status."""
    top, commands = parser()
    args = top.parse_args(argv)
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    if args.command == "demo":
        configure_logging(sys.stdout)  # the demo's story is its output
        asyncio.run(run_demo())
        return 0
    target = target_from(args, commands[args.command])
    configure_logging(sys.stderr)  # stdout is the command's data
    if args.command == "probe":
        return asyncio.run(probe(target, as_json=args.json))
    health_check = target.service if args.health or args.service is not None else None
    return asyncio.run(
        watch(target, interval=args.interval, health_check=health_check, as_json=args.json)
    )
