"""Who may change things through the API.

The unix socket is trusted: its file's mode and group are the access control, so every request is
allowed there. Over TCP a POST needs `Authorization: Bearer <token>` matching `api.token-file`, and
is refused when no token file is configured, because any local user (or anything a proxy forwards)
can reach a TCP port.

The token is the first non-blank line of the token file, without the whitespace around it; any
later line is ignored. The file is read at every POST (an operator may rotate it), and what is wrong
with it is logged for the operator, once per problem and hour, never told to the client: a client
learns only that the daemon cannot use its token file. A file that others than its owner may read
and a socket anyone may connect to are warned about when the API starts.
"""

from __future__ import annotations

import hmac
import logging
import os
import stat
import time

from aiohttp import web

from mhd.api.responses import ApiError
from mhd.config.records import ApiConfig

log = logging.getLogger("mhd.api")

LOG_EVERY = 3600.0  # seconds before the same problem with the token file is logged again
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="mhd"'}


class TokenFile:
    """Reads `api.token-file` for each POST over TCP; remembers which problems it has logged."""

    def __init__(self) -> None:
        self._said: dict[str, float] = {}  # message -> when it was last logged

    def token(self, path: str) -> bytes:
        """The token; ApiError 403 when the file cannot be used (the reason goes to the log)."""
        try:
            with open(path, "rb") as f:
                mode = os.fstat(f.fileno()).st_mode
                data = f.read(64 * 1024)
        except OSError as exc:
            self._say(logging.ERROR, f"cannot read api.token-file {path}: {exc.strerror}; POST over TCP is refused")
            raise ApiError(403, "the daemon cannot read its token file (api.token-file): see its log") from None
        self._check_mode(path, mode)
        token = next((line.strip() for line in data.splitlines() if line.strip()), b"")
        if not token:
            self._say(logging.ERROR, f"api.token-file {path} is empty: put a token in it (e.g. openssl rand -hex 32)")
            raise ApiError(403, "the daemon's token file (api.token-file) is empty: see its log")
        return token

    def check(self, path: str) -> None:
        """At start: warn now about a token file that is missing or readable by others."""
        try:
            mode = os.stat(path).st_mode
        except OSError as exc:
            self._say(logging.ERROR, f"cannot read api.token-file {path}: {exc.strerror}; POST over TCP is refused")
            return
        self._check_mode(path, mode)

    def _check_mode(self, path: str, mode: int) -> None:
        if mode & 0o077:
            self._say(
                logging.WARNING,
                f"api.token-file {path} has mode {stat.S_IMODE(mode):04o}: users other than its owner can read "
                f"or change the token that allows changes over TCP; chmod 600 {path}",
            )

    def _say(self, level: int, message: str) -> None:
        now = time.monotonic()
        last = self._said.get(message)
        if last is None or now - last >= LOG_EVERY:
            if len(self._said) > 100:
                self._said.clear()
            self._said[message] = now
            log.log(level, "%s", message)


def authorize(request: web.Request, api: ApiConfig | None, config_path: str, tokens: TokenFile) -> None:
    """Let a POST over TCP through when it carries the configured bearer token; raise ApiError otherwise."""
    socket_hint = f"or use the unix socket {api.socket}" if api and api.socket else ""
    if api is None or not api.token_file:
        raise ApiError(
            403,
            "changes over TCP need a bearer token: set api.token-file in "
            f"{config_path} and send 'Authorization: Bearer <token>' {socket_hint}".rstrip(),
        )
    token = tokens.token(api.token_file)
    # Header bytes that are not UTF-8 arrive as surrogate escapes: compare the bytes that were sent.
    given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
    scheme, _, value = given.partition(b" ")
    if scheme.lower() != b"bearer" or not value.strip():
        raise ApiError(401, "missing 'Authorization: Bearer <token>'", CHALLENGE)
    if not hmac.compare_digest(value.strip(), token):
        raise ApiError(401, "wrong bearer token", CHALLENGE)


def check_socket_mode(path: str, mode: int) -> None:
    """Warn when every local user may connect to the unix socket, where every change is allowed."""
    if mode & 0o002:
        log.warning(
            'api.socket-mode "%04o" lets every local user connect to %s and change IPVS: use "0660" '
            "and api.socket-group for the operators",
            mode, path,
        )  # fmt: skip
