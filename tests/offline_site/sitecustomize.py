"""Network guard for test subprocesses: Python imports this module at start-up when this folder
is on PYTHONPATH (tests/test_jobs_startup.py puts it there).

Every connection and name lookup off loopback is refused, and its address is appended to the
file named by OFFLINE_SITE_LOG, so the test sees what a subprocess (and its own worker
subprocesses, which inherit PYTHONPATH) tried; tests/conftest.py guards the test process with the same `is_loopback`.
"""
import ipaddress
import os
import socket

__all__ = ["is_loopback"]

_LOG = os.environ.get("OFFLINE_SITE_LOG")
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}
_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_getaddrinfo = socket.getaddrinfo


def is_loopback(host) -> bool:
    """Whether `host` (a name, an address, None for a local socket) is this machine."""
    if host is None:
        return True
    host = host.decode() if isinstance(host, bytes) else str(host)
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _refuse_off_loopback(host, port) -> None:
    if is_loopback(host):
        return
    if _LOG:
        with open(_LOG, "a") as fh:
            fh.write(f"{host}:{port} pid {os.getpid()}\n")
    raise OSError(f"test guard: no connection off loopback ({host}:{port})")


def _connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _refuse_off_loopback(address[0], address[1])
    return _real_connect(self, address)


def _connect_ex(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _refuse_off_loopback(address[0], address[1])
    return _real_connect_ex(self, address)


def _getaddrinfo(host, port, *args, **kwargs):
    _refuse_off_loopback(host, port)
    return _real_getaddrinfo(host, port, *args, **kwargs)


if _LOG:
    socket.socket.connect = _connect
    socket.socket.connect_ex = _connect_ex
    socket.getaddrinfo = _getaddrinfo
