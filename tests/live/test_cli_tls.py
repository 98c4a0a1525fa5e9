"""``probe`` over TLS and mutual TLS, with a CA made at test time, and the TLS options'
usage errors.

The servers run grpcio-health-checking's Health service in the test's event loop; the
command runs as a child process, given the CA and the client's key pair as files.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import grpc
import pytest

from tests._certs import KeyPair, TLSMaterial, make_tls_material
from tests._cli import TLSFiles, health_server, run_cli

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def tls() -> TLSMaterial:
    return make_tls_material()


@pytest.fixture
def files(tls: TLSMaterial, tmp_path: Path) -> TLSFiles:
    return TLSFiles.write(tls, tmp_path)


def server_credentials(identity: KeyPair, client_ca: bytes | None = None) -> grpc.ServerCredentials:
    """TLS with ``identity``; with ``client_ca``, mutual TLS (a client certificate is required)."""
    return grpc.ssl_server_credentials(
        [(identity.key, identity.cert)],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


@pytest.fixture
async def tls_server(tls: TLSMaterial) -> AsyncIterator[str]:
    """A TLS server whose certificate names localhost and 127.0.0.1."""
    async with health_server(server_credentials(tls.server)) as (_, address):
        yield address


async def probe(
    address: str, *options: str, fails: bool = False
) -> subprocess.CompletedProcess[str]:
    """probe --json; one that ``fails`` waits 1 s for connections, not 5."""
    timeout = "1" if fails else "5"
    args = ("probe", address, "--pool-size", "2", "--timeout", timeout, "--json", *options)
    return await anyio.to_thread.run_sync(lambda: run_cli(*args))


def statuses(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [channel["status"] for channel in json.loads(result.stdout)["channels"]]


def reasons(result: subprocess.CompletedProcess[str]) -> str:
    return " ".join(channel["reason"] or "" for channel in json.loads(result.stdout)["channels"])


async def test_probe_with_the_ca_file_reaches_a_tls_server(
    tls_server: str, files: TLSFiles
) -> None:
    result = await probe(tls_server, "--ca-file", files.ca)
    assert result.returncode == 0, result.stdout + result.stderr
    assert statuses(result) == ["SERVING", "SERVING"]
    assert json.loads(result.stdout)["tls"] == {
        "ca_file": files.ca,
        "client_certificate": None,
        "server_name": None,
    }


async def test_probe_without_the_servers_ca_fails_with_the_tls_reason(
    tls_server: str, files: TLSFiles
) -> None:
    default_roots, other_ca = [
        await probe(tls_server, *options, fails=True)
        for options in (["--tls"], ["--ca-file", files.other_ca])
    ]
    for result in (default_roots, other_ca):
        assert result.returncode == 1
        assert statuses(result) == ["NOT_CONNECTED", "NOT_CONNECTED"]
        assert "CERTIFICATE_VERIFY_FAILED" in reasons(result)
        assert "CERTIFICATE_VERIFY_FAILED" in result.stderr  # said as it happened


async def test_probe_in_plaintext_fails_against_a_tls_server(tls_server: str) -> None:
    result = await probe(tls_server, fails=True)
    assert result.returncode == 1
    assert statuses(result) == ["NOT_CONNECTED", "NOT_CONNECTED"]


async def test_server_name_checks_the_certificate_against_that_name(
    tls: TLSMaterial, files: TLSFiles
) -> None:
    """The certificate names only localhost; we dial 127.0.0.1."""
    async with health_server(server_credentials(tls.localhost_only_server)) as (_, address):
        dialled_ip = await probe(address, "--ca-file", files.ca, fails=True)
        named = await probe(address, "--ca-file", files.ca, "--server-name", "localhost")
    assert dialled_ip.returncode == 1
    assert "Hostname Verification Check failed" in reasons(dialled_ip)
    assert named.returncode == 0, named.stdout + named.stderr
    assert statuses(named) == ["SERVING", "SERVING"]


async def test_probe_with_a_client_certificate_passes_mutual_tls(
    tls: TLSMaterial, files: TLSFiles
) -> None:
    mutual = server_credentials(tls.server, client_ca=tls.ca)
    async with health_server(mutual) as (_, address):
        with_certificate = await probe(
            address,
            *("--ca-file", files.ca, "--cert-file", files.client_cert),
            *("--key-file", files.client_key),
        )
        without = await probe(address, "--ca-file", files.ca, fails=True)
    assert with_certificate.returncode == 0, with_certificate.stdout + with_certificate.stderr
    assert statuses(with_certificate) == ["SERVING", "SERVING"]
    assert json.loads(with_certificate.stdout)["tls"]["client_certificate"] == files.client_cert
    assert without.returncode == 1
    assert statuses(without) == ["NOT_CONNECTED", "NOT_CONNECTED"]


def test_the_tls_options_work_for_watch_too(files: TLSFiles) -> None:
    """watch shares probe's options: a wrong key is refused before anything runs."""
    result = run_cli(
        "watch", "127.0.0.1:1", "--cert-file", files.ca, "--key-file", files.client_key
    )
    assert result.returncode == 2
    assert f"--key-file: {files.client_key} is not the private key of {files.ca}" in result.stderr


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--cert-file", "{client_cert}"], "--cert-file needs --key-file"),
        (["--key-file", "{client_key}"], "--key-file needs --cert-file"),
        (["--ca-file", "{missing}"], "--ca-file: cannot read {missing}: No such file"),
        (["--ca-file", "{not_pem}"], "--ca-file: {not_pem} holds no PEM certificate"),
        (["--ca-file", "{client_key}"], "--ca-file: {client_key} holds no PEM certificate"),
        (
            ["--cert-file", "{missing}", "--key-file", "{client_key}"],
            "--cert-file: cannot read {missing}",
        ),
        (
            ["--cert-file", "{client_cert}", "--key-file", "{not_pem}"],
            "--key-file: {not_pem} holds no PEM private key",
        ),
        (
            ["--cert-file", "{not_pem}", "--key-file", "{client_key}"],
            "--cert-file: {not_pem} holds no PEM certificate",
        ),
    ],
)
def test_tls_options_that_cannot_work_are_usage_errors(
    files: TLSFiles, tmp_path: Path, options: list[str], message: str
) -> None:
    not_pem = tmp_path / "notes.txt"
    not_pem.write_text("not a certificate\n")
    names = {
        "client_cert": files.client_cert,
        "client_key": files.client_key,
        "missing": str(tmp_path / "missing.pem"),
        "not_pem": str(not_pem),
    }
    result = run_cli("probe", "127.0.0.1:1", *(option.format(**names) for option in options))
    assert result.returncode == 2
    assert message.format(**names) in result.stderr
    assert "usage: python -m conngrpc probe" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
