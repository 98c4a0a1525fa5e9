"""What probe and watch share: the address, the pool's size, TLS and the health service.

Every problem with these options (a bad address, a certificate file that is missing or
holds no certificate) is a usage error, found before any connection is tried: the
command exits 2 with a message naming the option, and no traceback.
"""

from __future__ import annotations

import argparse
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import grpc

from .._checks import check_count, check_seconds
from ..channel import Backoff, ChannelConfig, ExponentialBackoff

__all__ = ["Target", "add_target_options", "pool_size", "seconds", "target_from"]

T = TypeVar("T")

_TLS_NAME = "grpc.ssl_target_name_override"


@dataclass(frozen=True, slots=True)
class Target:
    """Where probe and watch connect, and how."""

    address: str
    pool_size: int
    timeout: float
    service: str
    credentials: grpc.ChannelCredentials | None = None
    options: tuple[tuple[str, Any], ...] = ()
    #: How TLS is verified, for people and JSON: None for plaintext.
    tls: dict[str, Any] | None = None

    def channel(
        self, *, health_check: str | None = None, backoff: Backoff | None = None
    ) -> ChannelConfig:
        """The ChannelConfig of every channel of the command's pool."""
        return ChannelConfig(
            self.address,
            options=self.options,
            credentials=self.credentials,
            connect_timeout=self.timeout,
            health_check=health_check,
            backoff=backoff if backoff is not None else ExponentialBackoff(),
        )


def _checked(
    expected: str, convert: Callable[[str], T], check: Callable[[str, T], T]
) -> Callable[[str], T]:
    """An argparse type: ``convert`` the text, then ``check`` it as conngrpc's settings
    are checked, or a usage error saying what was expected and what came.

    argparse names the option itself ("argument --timeout: ..."), so the message leaves
    it out: a check's messages begin with the name they are given, here none.
    """

    def parse(text: str) -> T:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        try:
            return check("", value)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error).removeprefix(": ")) from None

    return parse


#: Seconds as conngrpc bounds them (> 0, at most MAX_SECONDS).
seconds = _checked("seconds", float, check_seconds)

#: A number of channels: at least 1.
pool_size = _checked("an int >= 1", int, lambda where, value: check_count(where, value, minimum=1))


def add_target_options(
    parser: argparse.ArgumentParser, *, timeout: str, service: str, json: str
) -> None:
    """ADDRESS, --pool-size, --timeout, --service, --json and the TLS options.

    ``timeout``, ``service`` and ``json`` are the commands' own words for those options.
    """
    parser.add_argument(
        "address",
        metavar="ADDRESS",
        help="host:port, or any grpc target (dns:///host:port, ipv4:a:p,b:p, unix:path); "
        "without a port, port 443 is dialled, as grpc does; a host name is resolved and the "
        "channels are spread over every address it has",
    )
    parser.add_argument(
        "--pool-size",
        metavar="N",
        type=pool_size,
        default=4,
        help="channels to open, each on its own connection (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        metavar="S",
        type=seconds,
        default=5.0,
        help=f"{timeout} (default: %(default)g)",
    )
    parser.add_argument("--service", metavar="NAME", help=service)
    parser.add_argument("--json", action="store_true", help=json)
    tls = parser.add_argument_group(
        "TLS", "Plaintext unless one of these is given; each of them turns TLS on."
    )
    tls.add_argument(
        "--tls",
        action="store_true",
        help="connect with TLS, verifying the server's certificate against grpc's default "
        "roots (the bundle shipped with grpcio; set GRPC_DEFAULT_SSL_ROOTS_FILE_PATH to "
        "use another file, such as your system's) (default: off)",
    )
    tls.add_argument(
        "--ca-file",
        metavar="FILE",
        help="verify the server's certificate against the CA certificates in FILE (PEM) "
        "instead of the default roots (default: none)",
    )
    tls.add_argument(
        "--cert-file",
        metavar="FILE",
        help="mutual TLS: present the certificate (chain) in FILE (PEM); needs --key-file "
        "(default: none)",
    )
    tls.add_argument(
        "--key-file",
        metavar="FILE",
        help="mutual TLS: the unencrypted private key (PEM) of --cert-file; needs "
        "--cert-file (default: none)",
    )
    tls.add_argument(
        "--server-name",
        metavar="NAME",
        help="check the server's certificate against NAME instead of the host in ADDRESS "
        "(it overrides the name the certificate is checked against: grpc's "
        "grpc.ssl_target_name_override), e.g. to dial an IP address whose certificate "
        "names a host (default: the host in ADDRESS)",
    )


def target_from(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Target:
    """The Target the parsed options describe; a usage error (exit 2) if they are wrong."""
    try:
        ChannelConfig(args.address)
    except ValueError as error:
        parser.error(str(error).replace("ChannelConfig.address", "ADDRESS"))
    credentials, options, tls = _tls(args, parser.error)
    return Target(
        args.address,
        args.pool_size,
        args.timeout,
        args.service if args.service is not None else "",
        credentials,
        options,
        tls,
    )


def _tls(
    args: argparse.Namespace, error: Callable[[str], NoReturn]
) -> tuple[grpc.ChannelCredentials | None, tuple[tuple[str, Any], ...], dict[str, Any] | None]:
    """The credentials, channel options and description that the TLS options ask for."""
    for given, missing in (("cert_file", "key_file"), ("key_file", "cert_file")):
        if getattr(args, given) is not None and getattr(args, missing) is None:
            error(
                f"--{given.replace('_', '-')} needs --{missing.replace('_', '-')}: "
                "give both for mutual TLS, or neither"
            )
    if not (args.tls or args.ca_file or args.cert_file or args.server_name):
        return None, (), None
    roots = None
    if args.ca_file is not None:
        roots = _read(args.ca_file, "--ca-file", error)
        _check_certificates(roots, args.ca_file, "--ca-file", error)
    key = chain = None
    if args.cert_file is not None:
        chain = _read(args.cert_file, "--cert-file", error)
        key = _read(args.key_file, "--key-file", error)
        _check_certificates(chain, args.cert_file, "--cert-file", error)
        _check_key(args.cert_file, args.key_file, error)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=roots, private_key=key, certificate_chain=chain
    )
    options = ((_TLS_NAME, args.server_name),) if args.server_name else ()
    tls = {
        "ca_file": args.ca_file,
        "client_certificate": args.cert_file,
        "server_name": args.server_name,
    }
    return credentials, options, tls


def _read(path: str, option: str, error: Callable[[str], NoReturn]) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as problem:
        error(f"{option}: cannot read {path}: {problem.strerror or problem}")


def _check_certificates(
    pem: bytes, path: str, option: str, error: Callable[[str], NoReturn]
) -> None:
    """Fail unless ``pem`` holds certificates OpenSSL can read (grpc reads them only when
    it connects, and would then fail every attempt with a vague handshake error)."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=pem.decode("latin-1"))
    except ssl.SSLError as problem:
        error(f"{option}: {path} holds no PEM certificate that can be read ({_said(problem)})")


class _EncryptedKeyError(Exception):
    """The key file asks for a password, which grpc cannot give."""


def _no_password() -> bytes:
    raise _EncryptedKeyError


def _check_key(cert_path: str, key_path: str, error: Callable[[str], NoReturn]) -> None:
    """Fail unless the key file holds the unencrypted private key of the certificate."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(
            cert_path, key_path, password=_no_password
        )
    except _EncryptedKeyError:
        error(f"--key-file: {key_path} is encrypted; grpc needs an unencrypted PEM key")
    except ssl.SSLError as problem:
        if problem.reason == "KEY_VALUES_MISMATCH":
            error(f"--key-file: {key_path} is not the private key of {cert_path}")
        error(
            f"--key-file: {key_path} holds no PEM private key that can be read ({_said(problem)})"
        )


def _said(problem: ssl.SSLError) -> str:
    """What OpenSSL said, without the line of CPython's C source it came through."""
    return re.sub(r"\s*\(_ssl\.c:\d+\)", "", str(problem))
