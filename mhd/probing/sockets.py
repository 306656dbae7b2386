"""Non-blocking sockets for the probes that await (HTTP, UDP, DNS).

Connections are closed with an RST (SO_LINGER 0) once the answer is in, as HAProxy does for its
checks: the checker then keeps no TIME_WAIT sockets, which at 10,000 checks/s would otherwise
pile up by the hundred thousand.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct

LINGER_RST = struct.pack("ii", 1, 0)


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def open_socket(address: str, kind: socket.SocketKind, source: str | None) -> socket.socket:
    sock = socket.socket(_family(address), kind)
    try:
        sock.setblocking(False)
        if source is not None:
            sock.bind((source, 0))
    except BaseException:
        sock.close()
        raise
    return sock


async def connect(address: str, port: int, source: str | None) -> socket.socket:
    """A connected TCP socket that will close with an RST (see above)."""
    sock = open_socket(address, socket.SOCK_STREAM, source)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        await sock_connect(sock, (address, port))
    except BaseException:
        sock.close()
        raise
    return sock


async def sock_connect(sock: socket.socket, peer: tuple[str, int]) -> None:
    """loop.sock_connect() without its name resolution and bookkeeping: addresses here are
    always numeric, and HTTP checks run it thousands of times a second (plain TCP checks take
    the callback path of `Probes` instead)."""
    err = sock.connect_ex(peer)
    if err == errno.EINPROGRESS:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        fd = sock.fileno()
        loop.add_writer(fd, _wake, fut)
        try:
            await fut
        finally:
            loop.remove_writer(fd)
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, os.strerror(err))


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
