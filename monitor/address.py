"""HOST:PORT options (--serve, --mqtt), checked once for both."""

from __future__ import annotations

from fusionrt.runtime.errors import InputError

__all__ = ["parse_address"]


def parse_address(value: str, option: str, default_port: int) -> tuple:
    host, sep, port = str(value).rpartition(":")
    if not sep:
        host, port = str(value), str(default_port)
    host = host.strip("[]")  # an IPv6 literal: [::1]:8080
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise InputError(f"{option} {value!r}: expected HOST:PORT (e.g. 127.0.0.1:{default_port}).")
    return host, int(port)
