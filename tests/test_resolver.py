"""The default resolver and the dial config: a pool's target, read as grpc would read it.

DNS is a patched ``anyio.getaddrinfo`` that answers what the test says and records what
it was asked; no name is looked up on the network.
"""

from __future__ import annotations

import socket
from typing import Any

import anyio
import anyio.lowlevel
import grpc
import pytest

from conngrpc import ChannelConfig, Pool
from conngrpc.pool.resolver import default_resolver, dial_config, run_resolver
from conngrpc.testing import FakeConnector
from tests._pools import running_pool

pytestmark = [pytest.mark.anyio, pytest.mark.both_backends]

AUTHORITY = "grpc.default_authority"
TLS_NAME = "grpc.ssl_target_name_override"


class FakeDNS:
    """Stands in for ``anyio.getaddrinfo``: each host's addresses, and every question."""

    def __init__(self, records: dict[str, list[str]]) -> None:
        self.records = records
        self.asked: list[tuple[str, int, dict[str, Any]]] = []

    async def __call__(self, host: str, port: int, **kwargs: Any) -> list[tuple[Any, ...]]:
        self.asked.append((host, port, kwargs))
        if host not in self.records:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        answers = []
        for ip in self.records[host]:
            if ":" in ip:
                answers.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (ip, port, 0, 0)))
            else:
                answers.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)))
        return answers


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDNS:
    fake = FakeDNS(
        {
            "billing.internal": ["127.0.1.1", "127.0.1.2", "::1", "127.0.1.1"],
            "localhost": ["127.0.0.1", "::1"],
        }
    )
    monkeypatch.setattr(anyio, "getaddrinfo", fake)
    return fake


async def resolve(address: str, **fields: Any) -> list[str]:
    return await run_resolver(default_resolver(ChannelConfig(address=address, **fields)))


# --- the default resolver ------------------------------------------------------------------


@pytest.mark.parametrize("address", ["billing.internal:50051", "dns:///billing.internal:50051"])
async def test_host_port_resolves_to_every_a_and_aaaa_address_once(
    dns: FakeDNS, address: str
) -> None:
    assert await resolve(address) == ["127.0.1.1:50051", "127.0.1.2:50051", "[::1]:50051"]
    assert dns.asked == [("billing.internal", 50051, {"type": socket.SOCK_STREAM})]


async def test_localhost_resolves_to_both_loopbacks(dns: FakeDNS) -> None:
    assert await resolve("localhost:7000") == ["127.0.0.1:7000", "[::1]:7000"]


async def test_a_host_without_a_port_is_resolved_for_443(dns: FakeDNS) -> None:
    assert await resolve("billing.internal") == [
        "127.0.1.1:443",
        "127.0.1.2:443",
        "[::1]:443",
    ]
    assert dns.asked[0][:2] == ("billing.internal", 443)


@pytest.mark.parametrize(
    ("address", "backends"),
    [
        ("127.0.0.1:50051", ["127.0.0.1:50051"]),
        ("[::1]:50051", ["[::1]:50051"]),
        ("dns:///127.1.2.3:8080", ["127.1.2.3:8080"]),
        ("ipv4:127.0.0.1:1,127.0.0.2:2", ["127.0.0.1:1", "127.0.0.2:2"]),
        ("ipv6:[::1]:1,[fd00::2]:2", ["[::1]:1", "[fd00::2]:2"]),
    ],
)
async def test_addresses_written_as_ips_are_the_backends_without_a_lookup(
    dns: FakeDNS, address: str, backends: list[str]
) -> None:
    assert await resolve(address) == backends
    assert dns.asked == []


@pytest.mark.parametrize(
    "address",
    [
        "unix:/run/billing.sock",
        "unix:///run/billing.sock",
        "unix-abstract:billing",
        "dns://127.0.0.53/billing.internal:50051",  # grpc asks that DNS server, not us
        "xds:///billing",
    ],
)
async def test_other_targets_are_one_backend_as_written(dns: FakeDNS, address: str) -> None:
    assert await resolve(address) == [address]
    assert dns.asked == []


async def test_a_custom_connectors_address_is_one_backend_as_given(dns: FakeDNS) -> None:
    assert await resolve("billing.internal:50051", connector=FakeConnector()) == [
        "billing.internal:50051"
    ]
    assert dns.asked == []


async def test_a_name_that_does_not_resolve_raises_for_the_fleet_to_report(dns: FakeDNS) -> None:
    with pytest.raises(socket.gaierror):
        await resolve("nowhere.internal:50051")


# --- user resolvers ----------------------------------------------------------------------------


async def test_a_sync_and_an_async_resolver_answer_alike() -> None:
    def sync() -> list[str]:
        return ["127.0.1.1:1", "127.0.1.2:2"]

    async def asynchronous() -> tuple[str, ...]:
        await anyio.lowlevel.checkpoint()
        return ("127.0.1.1:1", "127.0.1.2:2")

    assert await run_resolver(sync) == await run_resolver(asynchronous) == sync()


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ("127.0.1.1:1", "expected a list of addresses, got '127.0.1.1:1'"),
        (None, "expected a list of addresses, got None"),
        ([b"127.0.1.1:1"], "expected addresses as str, got b'127.0.1.1:1'"),
        (["127.0.1.1:99999"], "expected a port from 1 to 65535"),
        ([""], "expected a host"),
    ],
    ids=["str", "None", "bytes", "bad port", "empty"],
)
async def test_an_async_resolver_that_answers_nonsense_is_refused_naming_it(
    answer: object, message: str
) -> None:
    async def resolver() -> object:
        return answer

    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        await run_resolver(resolver)  # type: ignore[arg-type]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # a pool runs on asyncio only
async def test_a_pool_spreads_over_what_an_async_resolver_returns(pool_name: str) -> None:
    connector = FakeConnector()
    backends = ["127.0.1.1:1", "127.0.1.2:2", "127.0.1.3:3"]

    async def resolver() -> list[str]:
        await anyio.lowlevel.checkpoint()
        return backends

    channel = {"address": "billing.internal:50051", "connector": connector}
    async with running_pool(pool_name, 6, channel, resolver=resolver):
        assert dict(Pool.status(pool_name).backends) == dict.fromkeys(backends, 2)
    assert {c.address for c in connector.calls} == set(backends)


# --- the dial config ---------------------------------------------------------------------------


def options(config: ChannelConfig) -> dict[str, Any]:
    return dict(config.options)


TLS = grpc.ssl_channel_credentials()


@pytest.mark.parametrize(
    ("address", "dialled"),
    [("127.0.1.1:50051", "ipv4:127.0.1.1:50051"), ("[::1]:50051", "ipv6:[::1]:50051")],
)
def test_an_address_under_a_host_name_keeps_the_names_tls_host_and_authority(
    address: str, dialled: str
) -> None:
    config = dial_config(ChannelConfig(address="billing.internal:50051", credentials=TLS), address)
    assert config.address == dialled  # an IP, so grpc does not resolve it again
    assert options(config)[AUTHORITY] == "billing.internal:50051"
    assert options(config)[TLS_NAME] == "billing.internal"
    assert config.credentials is TLS


def test_the_written_port_is_the_authoritys_even_when_defaulted() -> None:
    config = dial_config(ChannelConfig(address="dns:///billing.internal"), "127.0.1.1:443")
    assert config.address == "ipv4:127.0.1.1:443"
    assert options(config) == {AUTHORITY: "billing.internal:443"}


def test_without_tls_only_the_authority_is_set() -> None:
    config = dial_config(ChannelConfig(address="billing.internal:50051"), "127.0.1.2:50051")
    assert options(config) == {AUTHORITY: "billing.internal:50051"}


def test_names_the_user_set_in_options_are_kept() -> None:
    written = ChannelConfig(
        address="billing.internal:50051",
        credentials=TLS,
        options=[(AUTHORITY, "edge:443"), (TLS_NAME, "edge"), ("grpc.primary_user_agent", "x")],
    )
    config = dial_config(written, "127.0.1.1:50051")
    assert config.options == written.options


def test_the_target_as_written_is_dialled_as_it_is() -> None:
    written = ChannelConfig(address="billing.internal:50051", credentials=TLS)
    assert dial_config(written, "billing.internal:50051") is written


@pytest.mark.parametrize("written", ["ipv4:127.0.1.1:1,127.0.1.2:2", "unix:/run/billing.sock"])
def test_a_target_with_no_host_name_adds_no_names(written: str) -> None:
    config = dial_config(ChannelConfig(address=written, credentials=TLS), "127.0.1.2:2")
    assert config.address == "ipv4:127.0.1.2:2"
    assert options(config) == {}


def test_a_target_written_as_one_ip_names_that_ip() -> None:
    config = dial_config(ChannelConfig(address="127.0.1.9:50051", credentials=TLS), "127.0.1.2:2")
    assert options(config) == {AUTHORITY: "127.0.1.9:50051", TLS_NAME: "127.0.1.9"}


def test_a_backend_named_by_host_is_dialled_by_that_name() -> None:
    config = dial_config(ChannelConfig(address="billing.internal:50051"), "billing-2.internal:7")
    assert config.address == "billing-2.internal:7"
    assert options(config) == {AUTHORITY: "billing.internal:50051"}


def test_a_custom_connector_is_only_told_the_address() -> None:
    written = ChannelConfig(address="billing.internal:50051", connector=FakeConnector())
    config = dial_config(written, "127.0.1.1:50051")
    assert config.address == "127.0.1.1:50051"
    assert config.options == ()


def test_a_mocked_config_is_left_alone() -> None:
    written = ChannelConfig(address="billing.internal:50051", mock=lambda: None)
    assert dial_config(written, "127.0.1.1:50051") is written
