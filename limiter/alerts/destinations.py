"""Where a webhook may send: public addresses only, unless SLUICE_WEBHOOK_ALLOW_PRIVATE.

Staff type webhook URLs, and Sluice POSTs from inside the network: without this fence a
URL could reach loopback, private and link-local services (the cloud metadata service at
169.254.169.254 among them). A destination is checked when it is saved (the model field's
validator, `webhook_url_validate`) and again when it is sent (`post`), since DNS can
change in between: the send resolves the host once, checks every address, and connects
to a checked one with the URL's own Host header and TLS server name, so the name cannot
resolve elsewhere between the check and the connection.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any

import httpx
from django.conf import settings
from django.core.exceptions import ValidationError

MSG_PRIVATE = "Webhooks may not go to loopback, private, link-local or other non-public addresses."
MSG_UNRESOLVED = "The webhook's host could not be resolved."

DEFAULT_PORTS = {"http": 80, "https": 443}
# NAT64's well-known prefix: the last 32 bits are an IPv4 address the gateway reaches.
NAT64 = ipaddress.ip_network("64:ff9b::/96")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Refused(Exception):
    """A destination Sluice does not send to; the message is one of the constants above."""


def _embedded(ip: IPAddress) -> list[IPAddress]:
    """The address and the IPv4 addresses it stands for (::ffff:a.b.c.d, 6to4, NAT64)."""
    forms: list[IPAddress] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            forms.append(ip.ipv4_mapped)
        if ip.sixtofour is not None:
            forms.append(ip.sixtofour)
        if ip in NAT64:
            forms.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return forms


def address_public(address: str) -> bool:
    """Whether `address` is a public unicast address, in every form it stands for.
    Loopback, private (RFC 1918, fc00::/7), shared (100.64/10), link-local (169.254/16,
    fe80::/10, the metadata service), unspecified, multicast and reserved are not."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # fe80::1%eth0
    except ValueError:
        return False
    return all(
        form.is_global
        and not (
            form.is_private
            or form.is_loopback
            or form.is_link_local
            or form.is_multicast
            or form.is_reserved
            or form.is_unspecified
            or (isinstance(form, ipaddress.IPv6Address) and form.is_site_local)
        )
        for form in _embedded(ip)
    )


def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to, in the resolver's order (an IP literal: itself)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _checked(url: httpx.URL) -> list[str]:
    """The addresses to send `url` to, every one of them allowed; raises Refused."""
    host = url.raw_host.decode("ascii")
    try:
        addresses = resolve(host, url.port or DEFAULT_PORTS.get(url.scheme, 443))
    except (OSError, UnicodeError):
        raise Refused(MSG_UNRESOLVED) from None
    if not addresses:
        raise Refused(MSG_UNRESOLVED)
    if not settings.SLUICE_WEBHOOK_ALLOW_PRIVATE and not all(map(address_public, addresses)):
        raise Refused(MSG_PRIVATE)
    return addresses


def webhook_url_validate(value: str) -> None:
    """The Webhook.url field's validator: the destination as it resolves now."""
    if settings.SLUICE_WEBHOOK_ALLOW_PRIVATE:
        return
    try:
        _checked(httpx.URL(value))
    except httpx.InvalidURL:
        return  # URLField's own validator says what is wrong with it
    except Refused as exc:
        raise ValidationError(str(exc), code="webhook_destination") from None


async def post(client: httpx.AsyncClient, url: str, *, json: Any) -> httpx.Response:
    """POST `json` to `url` at an address checked just now; raises Refused, or httpx's
    errors. Each address the name resolves to is tried in turn until one connects."""
    target = httpx.URL(url)
    addresses = await asyncio.to_thread(_checked, target)
    # The URL's own name for the receiver's virtual host and its certificate.
    headers = {"host": target.netloc.decode("ascii")}
    extensions = (
        {"sni_hostname": target.raw_host.decode("ascii")} if target.scheme == "https" else {}
    )
    for index, address in enumerate(addresses):
        try:
            return await client.post(
                target.copy_with(host=address), json=json, headers=headers, extensions=extensions
            )
        except httpx.ConnectError:
            if index == len(addresses) - 1:
                raise
    raise AssertionError("unreachable: _checked returns at least one address")
