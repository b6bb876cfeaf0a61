"""The SSRF guard (SPEC §5): URL syntax at enqueue, the address policy, and the guarded
connection pool that checks the address actually connected to (first request, every
redirect, DNS answers that change between look-ups)."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import pytest

from ntq import delivery, urlsafety
from ntq.config import load_settings
from ntq.urlsafety import AddressPolicy, UnsafeURL, check_url
from tests.support.hook import HookServer

# ---------------------------------------------------------------------------------------
# check_url: syntax only (addresses are checked when connecting)

ACCEPTED_URLS = [
    "http://example.com/",
    "https://example.com:8443/a/b?c=d&e=f#frag",
    "HTTP://EXAMPLE.COM/upper",
    "http://[2001:db8::1]:8080/",
    "http://xn--bcher-kva.example/",
    "http://127.0.0.1:9/",  # syntactically fine: refused later, at connect time
    "http://example.com/" + "a" * (2048 - len("http://example.com/")),
]

REJECTED_URLS = [
    "",
    "example.com",
    "/relative/path",
    "//example.com/scheme-relative",
    "javascript:alert(1)",
    "JavaScript:alert(document.cookie)",
    "file:///etc/passwd",
    "gopher://127.0.0.1:25/_HELO",
    "ftp://example.com/",
    "dict://127.0.0.1:11211/stat",
    "data:text/plain,hello",
    "ldap://example.com/",
    "http://",
    "http:///no-host",
    "http://:80/",
    "http://example.com:0/",
    "http://example.com:99999/",
    "http://example.com:-1/",
    "http://[::1/",
    "http://example.com/" + "a" * 2048,
    "http://exa mple.com/",
    "http://example.com/\r\nX-Injected: 1",
    "http://example.com/\nx",
    "http://example.com/\x00",
    "http://example.com/\x7f",
    "http://example.com/\t",
    # Hosts no HTTP client can resolve (not valid IDNA): requests raises InvalidURL for
    # each, so accepting them means a task that retries its whole budget and never runs.
    "http://evil\u202ecom.example/",  # RTL override
    "http://\U0001f600.example/",  # emoji
]


@pytest.mark.parametrize("url", ACCEPTED_URLS)
def test_check_url_accepts(url: str) -> None:
    assert check_url(url) == url


@pytest.mark.parametrize("url", REJECTED_URLS)
def test_check_url_rejects(url: str) -> None:
    with pytest.raises(UnsafeURL):
        check_url(url)


# ---------------------------------------------------------------------------------------
# AddressPolicy.permits

NON_PUBLIC = [
    "127.0.0.1",
    "127.0.0.2",
    "127.255.255.254",  # loopback
    "0.0.0.0",
    "0.1.2.3",  # "this network" (0.0.0.0 reaches the local host on Linux)
    "10.0.0.1",
    "10.255.255.255",
    "172.16.0.1",
    "172.31.255.254",
    "192.168.0.1",
    "169.254.169.254",
    "169.254.0.1",  # link-local, cloud metadata
    "100.64.0.1",  # carrier-grade NAT
    "192.0.0.1",
    "192.0.2.1",
    "198.18.0.1",
    "198.51.100.1",
    "203.0.113.1",  # reserved
    "224.0.0.1",
    "239.255.255.250",  # multicast
    "240.0.0.1",
    "255.255.255.255",  # reserved, broadcast
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "fd12:3456::1",
    "ff02::1",
    "2001:db8::1",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "::ffff:192.168.1.1",
    "::ffff:0.0.0.0",
]
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8"]


@pytest.mark.parametrize("address", NON_PUBLIC)
def test_default_policy_refuses_non_public_addresses(address: str) -> None:
    assert not AddressPolicy(False).permits(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", PUBLIC)
def test_default_policy_permits_public_addresses(address: str) -> None:
    assert AddressPolicy(False).permits(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", NON_PUBLIC + PUBLIC)
def test_allow_private_permits_everything(address: str) -> None:
    assert AddressPolicy(True).permits(ipaddress.ip_address(address))


def test_cidr_allow_list_opens_only_the_listed_networks() -> None:
    settings = load_settings({"NTQ_ALLOW_PRIVATE_NETWORKS": "127.0.0.2/32, 10.1.0.0/16"})
    policy = AddressPolicy.from_settings(settings)
    allowed = ["127.0.0.2", "10.1.2.3", "::ffff:127.0.0.2", "8.8.8.8"]
    refused = ["127.0.0.1", "10.2.0.1", "::ffff:127.0.0.1", "169.254.169.254", "::1"]
    assert [policy.permits(ipaddress.ip_address(a)) for a in allowed] == [True] * 4
    assert [policy.permits(ipaddress.ip_address(a)) for a in refused] == [False] * 5


def test_guard_is_on_by_default_and_describes_itself() -> None:
    assert not load_settings({}).allow_private_networks
    assert "refused" in AddressPolicy.from_settings(load_settings({})).describe()
    on = load_settings({"NTQ_ALLOW_PRIVATE_NETWORKS": "true"})
    assert "allowed" in AddressPolicy.from_settings(on).describe()
    nets = load_settings({"NTQ_ALLOW_PRIVATE_NETWORKS": "127.0.0.2/32"})
    assert "127.0.0.2/32" in AddressPolicy.from_settings(nets).describe()


# ---------------------------------------------------------------------------------------
# The guarded session the worker delivers with: refusals happen at connect time
# (``hook`` and ``hook2``, on 127.0.0.2, are the suite's hook receivers: tests/conftest.py)


def session(allow: str = "false") -> Any:
    return delivery.make_session(load_settings({"NTQ_ALLOW_PRIVATE_NETWORKS": allow}), 4)


def get(url: str, allow: str = "false", timeout: float = 3) -> Any:
    return delivery.call(session(allow), "POST", url, {}, b"secret-body", timeout, 1024)


def assert_refused(result: Any) -> None:
    assert result.status_code is None
    assert result.error is not None
    assert result.error.startswith("refused:"), result.error
    assert "non-public" in result.error


def hosts_for(port: int) -> list[str]:
    return [
        f"http://{h}:{port}/x"
        for h in (
            "localhost",
            "127.0.0.1",
            "[::1]",
            "0.0.0.0",
            "[::ffff:127.0.0.1]",
            "127.1",
            "2130706433",
            "0x7f.0.0.1",
            "10.0.0.1",
            "172.16.0.1",
            "192.168.0.1",
            "169.254.169.254",
            "[fe80::1]",
            "[fc00::1]",
            "224.0.0.1",
            "100.64.0.1",
        )
    ]


def test_guarded_session_refuses_every_non_public_host_before_connecting(hook: HookServer) -> None:
    port = hook.server_address[1]
    for url in hosts_for(port):
        result = get(url)
        assert_refused(result)
    assert hook.received == []


def test_refusal_is_final_not_retried() -> None:
    result = get("http://169.254.169.254/latest/meta-data/")
    assert_refused(result)
    settings = load_settings({}, min_due_delay=0.1, max_due_delay=1.0)
    task: Any = type("T", (), {"retry_count": 1, "max_retries": 10, "backoff": "linear"})()
    assert delivery.classify(task, result, settings).decision == "fail"


def test_allow_list_opens_exactly_the_listed_address(hook: HookServer, hook2: HookServer) -> None:
    assert get(hook2.url + "/ok", allow="127.0.0.2/32").status_code == 200
    assert len(hook2.requests("/ok")) == 1
    assert_refused(get(hook.url + "/ok", allow="127.0.0.2/32"))
    assert hook.received == []
    assert get(hook.url + "/ok", allow="true").status_code == 200


def test_redirect_to_a_private_host_is_refused(hook: HookServer, hook2: HookServer) -> None:
    target = hook.script("/internal")
    hook2.script("/redirect", {"status": 302, "headers": {"Location": target}})
    result = get(hook2.url + "/redirect", allow="127.0.0.2/32")
    assert_refused(result)
    assert len(hook2.requests("/redirect")) == 1
    assert hook.received == []


def test_environment_proxy_cannot_bypass_the_guard(
    hook2: HookServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, hook2.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert_refused(get("http://10.0.0.1/x", allow="127.0.0.2/32"))
    assert hook2.received == []


REAL_GETADDRINFO = socket.getaddrinfo


def fake_dns(monkeypatch: pytest.MonkeyPatch, answers: list[list[str]]) -> list[str]:
    """Make ``*.rebind.test`` resolve to successive ``answers`` (the last repeats);
    returns the list of names looked up."""
    looked_up: list[str] = []

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if not str(host).endswith(".rebind.test"):
            return REAL_GETADDRINFO(host, port, *args, **kwargs)
        answer = answers[min(len(looked_up), len(answers) - 1)]
        looked_up.append(str(host))
        out = []
        for address in answer:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            sockaddr = (address, int(port), 0, 0) if ":" in address else (address, int(port))
            out.append((family, socket.SOCK_STREAM, 6, "", sockaddr))
        return out

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return looked_up


def test_a_name_resolving_to_a_private_address_is_refused(
    hook: HookServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    looked_up = fake_dns(monkeypatch, [["127.0.0.1"]])
    url = f"http://evil.rebind.test:{hook.server_address[1]}/x"
    assert_refused(get(url))
    assert looked_up
    assert hook.received == []
    # Control: the fake name really leads to the hook when private targets are allowed.
    assert get(url, allow="true").status_code == 200
    assert len(hook.received) == 1


def test_connects_to_the_checked_address_so_rebinding_cannot_switch_it(
    hook: HookServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first answer is public, every later one private: the connection must go to the
    address that was checked, never to a fresh look-up's."""
    fake_dns(monkeypatch, [["8.8.8.8"], ["127.0.0.1"]])
    dialed: list[tuple[str, int]] = []

    def create_connection(address: tuple[str, int], *args: Any, **kwargs: Any) -> Any:
        dialed.append(address)
        raise OSError("no network in this test")

    monkeypatch.setattr(urlsafety, "create_connection", create_connection)
    port = hook.server_address[1]
    result = get(f"http://victim.rebind.test:{port}/x")
    assert result.status_code is None
    assert dialed
    assert {host for host, _ in dialed} == {"8.8.8.8"}
    assert hook.received == []


def test_mixed_answers_connect_only_to_permitted_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dns(monkeypatch, [["127.0.0.1", "10.0.0.1", "8.8.4.4", "::1"]])
    dialed: list[tuple[str, int]] = []

    def create_connection(address: tuple[str, int], *args: Any, **kwargs: Any) -> Any:
        dialed.append(address)
        raise OSError("no network in this test")

    monkeypatch.setattr(urlsafety, "create_connection", create_connection)
    get("http://mixed.rebind.test:8080/x")
    assert dialed
    assert {host for host, _ in dialed} == {"8.8.4.4"}
