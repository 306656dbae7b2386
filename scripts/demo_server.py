#!/usr/bin/env python3
"""A real server for the demo: HTTP(S) answering /healthz, or DNS answering every query.

    demo_server.py http ADDRESS PORT [--tls CERT KEY]
    demo_server.py dns ADDRESS PORT

One process per endpoint, so the demo can kill one server and start it again.
"""

from __future__ import annotations

import socket
import ssl
import struct
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"ok from {self.server.server_address[0]}\n".encode()
        self.send_response(200 if self.path == "/healthz" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, format: str, *args: object) -> None:
        pass


class Server(ThreadingHTTPServer):
    def __init__(self, address: str, port: int) -> None:
        self.address_family = socket.AF_INET6 if ":" in address else socket.AF_INET
        super().__init__((address, port), Handler)

    def handle_error(self, request: object, client_address: object) -> None:
        """Health checkers close with a reset once they have the status line: not an error."""


def serve_http(address: str, port: int, tls: tuple[str, str] | None) -> None:
    server = Server(address, port)
    if tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*tls)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


def serve_dns(address: str, port: int) -> None:
    """Answer every query with NOERROR and one A record 192.0.2.1 (enough for a health check)."""
    sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, port))
    while True:
        query, peer = sock.recvfrom(512)
        if len(query) < 12:
            continue
        qid = query[:2]
        question = query[12:]
        end = question.index(b"\0") + 5
        header = qid + struct.pack(">HHHHH", 0x8180, 1, 1, 0, 0)
        answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton("192.0.2.1")
        sock.sendto(header + question[:end] + answer, peer)


def main() -> None:
    kind, address, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if kind == "dns":
        serve_dns(address, port)
    else:
        tls = (sys.argv[5], sys.argv[6]) if len(sys.argv) > 4 and sys.argv[4] == "--tls" else None
        serve_http(address, port, tls)


if __name__ == "__main__":
    main()
