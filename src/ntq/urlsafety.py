"""The SSRF guard: which webhook URLs ntq accepts and which addresses it connects to.

Two checks. :func:`check_url` rejects malformed URLs when a task is created. The address
check runs when a connection is actually opened — on the resolved address, for the first
request and every redirect — so DNS rebinding cannot reach a private network.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

import idna
from requests import PreparedRequest, RequestException
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import NameResolutionError, NewConnectionError
from urllib3.util.connection import create_connection

from ntq.config import Network, Settings

MAX_URL_LENGTH = 2048

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
# Deprecated IPv4-compatible IPv6 addresses (::a.b.c.d) are never a public webhook target.
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


class UnsafeURL(ValueError):
    """The URL is not one ntq will call."""


class BlockedAddress(NewConnectionError):
    """The webhook's host resolves to an address ntq is not allowed to connect to."""


def check_url(url: str) -> str:
    """Return ``url`` if it is an absolute http(s) URL ntq can call, else raise UnsafeURL."""
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeURL(f"url is longer than {MAX_URL_LENGTH} characters")
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise UnsafeURL("url must not contain whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeURL(f"url is malformed: {exc}") from exc
    if parts.scheme not in ("http", "https"):
        raise UnsafeURL("url scheme must be http or https")
    if not parts.hostname:
        raise UnsafeURL("url must name a host")
    if port == 0:
        raise UnsafeURL("url port must be between 1 and 65535")
    if not parts.hostname.isascii():
        try:
            idna.encode(parts.hostname, uts46=True)
        except idna.IDNAError as exc:
            raise UnsafeURL(f"url host is not a valid domain name: {exc}") from None
    return _sendable(url)


def _sendable(url: str) -> str:
    """``url`` if delivery can use it: requests' own parsing, then the resolver's IDNA
    encoding of the host (an empty or over-long label fails only there, at connect)."""
    prepared = PreparedRequest()
    try:
        prepared.prepare_url(url, None)
    except RequestException as exc:
        raise UnsafeURL(f"url host is not a valid domain name: {exc}") from None
    try:
        (urlsplit(prepared.url or "").hostname or "").encode("idna")
    except UnicodeError:
        raise UnsafeURL(
            "url host is not a valid domain name: a label is empty or longer than 63 characters"
        ) from None
    return url


class AddressPolicy:
    """Decides whether an address may be connected to."""

    def __init__(self, allow_private: bool, allowed: tuple[Network, ...] = ()) -> None:
        self.allow_private = allow_private
        self.allowed = allowed

    @classmethod
    def from_settings(cls, settings: Settings) -> AddressPolicy:
        return cls(settings.allow_private_networks, settings.allowed_networks)

    def permits(self, address: Address) -> bool:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        if self.allow_private or any(address in net for net in self.allowed):
            return True
        if address in IPV4_COMPATIBLE:
            return False
        return address.is_global and not address.is_multicast

    def describe(self) -> str:
        if self.allow_private:
            return "private network targets are allowed"
        if self.allowed:
            nets = ", ".join(str(n) for n in self.allowed)
            return f"only public targets and {nets} are allowed"
        return "private network targets are refused"


def _resolve(host: str, port: int) -> list[tuple[int, Address]]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [
        (family, ipaddress.ip_address(str(addr[0]).split("%")[0]))
        for family, _, _, _, addr in infos
    ]


def _guarded_new_conn(conn: HTTPConnection, policy: AddressPolicy) -> socket.socket:
    try:
        resolved = _resolve(conn._dns_host, conn.port)
    except socket.gaierror as exc:
        raise NameResolutionError(conn.host, conn, exc) from exc
    allowed = [addr for _, addr in resolved if policy.permits(addr)]
    if not allowed:
        shown = ", ".join(sorted({str(a) for _, a in resolved}))
        raise BlockedAddress(
            conn,
            f"refused: {conn.host} resolves to a non-public "
            f"address ({shown}); see NTQ_ALLOW_PRIVATE_NETWORKS",
        )
    last: OSError | None = None
    for address in allowed:
        try:
            return create_connection(
                (str(address), conn.port),
                conn.timeout,
                source_address=conn.source_address,
                socket_options=conn.socket_options,
            )
        except OSError as exc:
            last = exc
    raise NewConnectionError(conn, f"Failed to establish a new connection: {last}")


def guarded_pool_classes(policy: AddressPolicy) -> dict[str, type[HTTPConnectionPool]]:
    """Connection pool classes whose connections pass ``policy`` before connecting."""

    class GuardedHTTPConnection(HTTPConnection):
        def _new_conn(self) -> socket.socket:
            return _guarded_new_conn(self, policy)

    class GuardedHTTPSConnection(HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            return _guarded_new_conn(self, policy)

    class GuardedHTTPPool(HTTPConnectionPool):
        ConnectionCls = GuardedHTTPConnection

    class GuardedHTTPSPool(HTTPSConnectionPool):
        ConnectionCls = GuardedHTTPSConnection

    return {"http": GuardedHTTPPool, "https": GuardedHTTPSPool}
