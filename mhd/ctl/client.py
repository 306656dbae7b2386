"""mhctl's side of the API: HTTP over the daemon's unix socket (or TCP), and the human status table.

Standard library only (http.client, socket, json): mhctl starts in tens of milliseconds instead of
paying for importing aiohttp, and works from a rescue shell with nothing but Python. http.client
itself (and the email package under it) is imported on the first request: mhctl's offline commands
(check, plan, apply) register these commands but never pay for it (0.8 s of a cold `mhctl apply`
in the emulated test VM).

A failure is a `ClientError` (exit 1: daemon not running, refused, timed out; exit 2 when `usage`:
an unknown service or server, a bad --api) or `Rejected` (exit 2: the daemon rejected its config
file on reload); `mhd.ctl.exits` turns them into the message and the exit status.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import socket
import sys
import time
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    import http.client

TIMEOUT = 75.0  # seconds: a reload waits up to 60s for the daemon's loop
WITHDRAW_TIMEOUT = 60.0  # seconds `mhctl drain --wait` waits for the daemon to withdraw its routes


class ClientError(Exception):
    """A failure with a one-line message for the operator; `usage`: the operator's input was wrong."""

    def __init__(self, message: str, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


class Rejected(Exception):
    """The daemon refused its config file on reload: `lines` say why, one problem a line."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__(lines[0] if lines else "rejected")
        self.lines = lines


def unix_connection(path: str, timeout: float) -> http.client.HTTPConnection:
    """An http.client connection over the unix stream socket at `path`."""
    return _unix_connection_class()(path, timeout)


@functools.cache
def _unix_connection_class() -> Callable[[str, float], http.client.HTTPConnection]:
    import http.client

    class UnixHTTPConnection(http.client.HTTPConnection):
        def __init__(self, path: str, timeout: float) -> None:
            super().__init__("localhost", timeout=timeout)
            self.socket_path = path

        def connect(self) -> None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.socket_path)
            except OSError:
                sock.close()
                raise
            self.sock = sock

    return UnixHTTPConnection


class Client:
    """One daemon endpoint: the unix socket by default, or an http(s) URL with an optional token."""

    def __init__(self, socket_path: str, api: str | None = None, token: str | None = None) -> None:
        self.socket_path = socket_path
        self.api = api
        self.token = token

    @property
    def where(self) -> str:
        return self.api or self.socket_path

    def _connection(self) -> http.client.HTTPConnection:
        import http.client

        if self.api is None:
            return unix_connection(self.socket_path, TIMEOUT)
        url = urllib.parse.urlsplit(self.api)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ClientError(f"--api must be an http:// or https:// URL, not {self.api!r}", usage=True)
        if url.scheme == "https":
            return http.client.HTTPSConnection(url.hostname, url.port, timeout=TIMEOUT)
        return http.client.HTTPConnection(url.hostname, url.port, timeout=TIMEOUT)

    def request(self, method: str, path: str) -> tuple[int, Any]:
        """Send one request; returns (status, decoded JSON). Raises ClientError when no answer came."""
        headers = {"Accept": "application/json", "Content-Length": "0"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        import http.client

        prefix = urllib.parse.urlsplit(self.api).path.rstrip("/") if self.api else ""
        conn = self._connection()
        try:
            conn.request(method, prefix + path, headers=headers)
            response = conn.getresponse()
            body = response.read()
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise ClientError(f"mhd is not running: cannot connect to {self.where}: {exc.strerror}") from None
        except PermissionError:
            raise ClientError(
                f"permission denied on {self.where}: run as root or as a member of the socket's group "
                "(api.socket-group)"
            ) from None
        except TimeoutError:
            raise ClientError(f"mhd did not answer within {TIMEOUT:g}s on {self.where}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise ClientError(f"cannot talk to mhd on {self.where}: {exc}") from None
        finally:
            conn.close()
        try:
            return response.status, json.loads(body) if body else None
        except ValueError:
            raise ClientError(f"{self.where} answered {response.status} with something not JSON") from None


def quote(segment: str) -> str:
    """A path segment: `[2001:db8::1]:80` travels as %5B2001%3Adb8%3A%3A1%5D%3A80."""
    return urllib.parse.quote(segment, safe="")


def error_of(status: int, doc: Any) -> str:
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        return str(doc["error"])
    return f"unexpected answer: HTTP {status}"


# --- commands --------------------------------------------------------------------------------------


def client_from(args: argparse.Namespace) -> Client:
    """The client of the daemon options; the token is the file's first non-blank line, as the
    daemon reads its api.token-file."""
    token = None
    if args.token_file:
        try:
            with open(args.token_file) as f:
                token = next((line.strip() for line in f if line.strip()), "")
        except OSError as exc:
            raise ClientError(f"cannot read --token-file {args.token_file}: {exc.strerror}") from None
    return Client(args.socket, args.api, token)


def cmd_status(args: argparse.Namespace) -> None:
    code, doc = client_from(args).request("GET", "/v1/status")
    if code != 200:
        raise ClientError(error_of(code, doc))
    if args.json:
        print(json.dumps(doc, indent=1))
    else:
        sys.stdout.write(format_status(doc, Colors(use_color(sys.stdout))))


def cmd_reload(args: argparse.Namespace) -> None:
    code, doc = client_from(args).request("POST", "/v1/reload")
    if code == 422 and isinstance(doc, dict):
        errors = [str(e) for e in doc.get("errors") or [error_of(code, doc)]]
        raise Rejected(["reload rejected, the daemon keeps its running config:", *errors])
    if code != 200:
        raise ClientError(error_of(code, doc))
    print(f"reloaded (sha256 {str(doc.get('sha256', ''))[:12]})")


def cmd_disable(args: argparse.Namespace) -> None:
    verb = "disable" if args.command == "disable" else "enable"
    path = f"/v1/services/{quote(args.service)}/servers/{quote(args.server)}/{verb}"
    code, doc = client_from(args).request("POST", path)
    if code != 200:
        raise ClientError(error_of(code, doc), usage=code == 404)
    print(f"{doc['service']} {doc['server']}: {verb}d")


def cmd_drain(args: argparse.Namespace) -> None:
    """Drain or undrain this director; `--wait`: until the daemon reports every route withdrawn, then
    SECONDS more for the routers to converge (BGP withdrawal, the router's FIB)."""
    verb = args.command
    client = client_from(args)
    code, doc = client.request("POST", f"/v1/{verb}")
    if code != 200:
        raise ClientError(error_of(code, doc))
    print(f"{verb}ed")
    if verb == "drain" and args.wait is not None:
        deadline = time.monotonic() + WITHDRAW_TIMEOUT
        while not doc.get("withdrawn"):
            if time.monotonic() > deadline:
                raise ClientError(f"routes still announced after {WITHDRAW_TIMEOUT:g}s: see mhctl status")
            time.sleep(0.2)
            code, status = client.request("GET", "/v1/status")
            doc = status.get("fleet", {}) if code == 200 and isinstance(status, dict) else {}
        print("every route withdrawn")
        if args.wait > 0:
            time.sleep(args.wait)
            print(f"waited {args.wait:g}s for the routers")


# --- the human table ---------------------------------------------------------------------------------


def use_color(stream: TextIO) -> bool:
    """Colour only on a terminal, and never when NO_COLOR is set (https://no-color.org)."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    return hasattr(stream, "isatty") and stream.isatty()


COLOR_CODES = {"green": "32", "yellow": "33", "red": "31", "cyan": "36", "bold": "1", "dim": "2"}
WORD_COLORS = {
    "ok": "green", "up": "green", "yes": "green",
    "degraded": "yellow", "unknown": "yellow", "disabled": "cyan",
    "down": "red", "panic": "red", "no": "red", "FAILED": "red",
}  # fmt: skip


class Colors:
    """ANSI colours, or nothing at all when disabled."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def paint(self, text: str, color: str | None) -> str:
        if not self.enabled or color is None or not text.strip():
            return text
        return f"\033[{COLOR_CODES[color]}m{text}\033[0m"

    def word(self, padded: str) -> str:
        """Colour a padded cell by the word in it (padding stays outside the escape codes)."""
        word = padded.strip()
        colored = self.paint(word, WORD_COLORS.get(word))
        return padded.replace(word, colored, 1) if word else padded


def ago(at: float | None, now: float) -> str:
    if not at:
        return "-"
    seconds = max(0.0, now - at)
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.0f}h ago"


def clock(at: float | None) -> str:
    if not at:
        return "-"
    return datetime.datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M:%S")


def latency(seconds: float) -> str:
    return f"{seconds * 1000:.1f}ms" if seconds < 1 else f"{seconds:.2f}s"


def last_check(check: dict[str, Any] | None, now: float) -> str:
    if not check:
        return "-"
    result = "ok" if check["ok"] else "FAILED"
    text = f"{ago(check['at'], now)} {result} {latency(check['latency'])}"
    return text + (f": {check['detail']}" if check.get("detail") and not check["ok"] else "")


def format_header(daemon: dict[str, Any], c: Colors) -> list[str]:
    config = daemon["config"]
    lines = [
        c.paint(f"mhd {daemon['version']} (pid {daemon['pid']}): {daemon['summary']}", "bold"),
        f"config  {config['path']}  sha256 {(config['sha256'] or '-')[:12]}  loaded {clock(config['loaded_at'])}",
    ]
    reload = daemon.get("last_reload")
    if reload and not reload["ok"]:
        errors = reload["errors"] or ["?"]
        more = f" (+{len(errors) - 1} more: mhctl reload lists them)" if len(errors) > 1 else ""
        lines.append(f"reload  {c.paint('FAILED', 'red')} at {clock(reload['at'])}: {errors[0]}{more}")
    elif reload:
        lines.append(f"reload  ok at {clock(reload['at'])}")
    kernel = daemon.get("kernel")
    if kernel:
        variant = kernel.get("ip_vs_mh") or "not loaded"
        lines.append(f"kernel  {kernel['release']}, ip_vs_mh {variant}, {kernel['mh_table_size']} slots")
    return lines


def format_fleet(fleet: dict[str, Any] | None) -> list[str]:
    """The fleet lines: drained or not, each VIP announced or not and why, sysctl drift."""
    if not fleet:
        return []
    lines = []
    if fleet.get("announce") or fleet.get("drained"):
        state = "DRAINED" if fleet["drained"] else "announcing"
        lines.append(
            f"fleet   {state}" + (f", table {fleet['announce']['table']}" if fleet.get("announce") else "")
        )
    for vip in fleet.get("vips", []):
        lines.append(
            f"  vip {vip['vip']}  {'announced' if vip['announced'] else 'withdrawn'}  {vip['reason']}"
        )
    lines += [f"  route write failed: {f}" for f in fleet.get("failures", [])]
    drift = [
        f"{s['name']}={s['current']} (want {s['desired']})" for s in fleet.get("sysctl", []) if s["drift"]
    ]
    if drift:
        lines.append("  sysctl drift: " + ", ".join(drift))
    return lines


SERVER_COLUMNS = ("SERVER", "HEALTH", "KERNEL", "DISABLED", "WEIGHT", "ACTIVE", "LAST CHECK")
COLORED = {1, 2, 3}  # columns coloured by their word


def server_row(server: dict[str, Any], now: float) -> list[str]:
    stats = server.get("stats")
    return [
        server["name"],
        server["health"],
        "yes" if server["in_kernel"] else "no",
        "disabled" if server["disabled"] else "-",
        str(server["weight"]),
        str(stats["active_conns"]) if stats else "-",
        last_check(server.get("last_check"), now),
    ]


def format_status(doc: dict[str, Any], c: Colors, now: float | None = None) -> str:
    """The `mhctl status` text: a header, then each service and a table of its servers."""
    now = time.time() if now is None else now
    lines = format_header(doc["daemon"], c) + format_fleet(doc.get("fleet"))
    rows = {id(svc): [server_row(s, now) for s in svc["servers"]] for svc in doc["services"]}
    all_rows = [list(SERVER_COLUMNS)] + [r for rs in rows.values() for r in rs]
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(SERVER_COLUMNS) - 1)]
    for svc in doc["services"]:
        flags = f" ({', '.join(svc['flags'])})" if svc["flags"] else ""
        state = c.word(svc["state"])
        counts = f"{svc['servers_up']}/{svc['servers_total']} up, {svc['servers_in_kernel']} in IPVS"
        if svc.get("table_digest"):
            counts += f", table {svc['table_digest']}"
        lines += [
            "",
            f"{c.paint(svc['name'], 'bold')}  {svc['virtual']}  {svc['scheduler']}{flags}  {state}  {counts}",
        ]
        lines.append("  " + c.paint(_row(list(SERVER_COLUMNS), widths, None), "dim"))
        lines += ["  " + _row(row, widths, c) for row in rows[id(svc)]]
    if not doc["services"]:
        lines += ["", "no services configured"]
    return "\n".join(lines) + "\n"


def _row(cells: list[str], widths: list[int], c: Colors | None) -> str:
    out = []
    for i, cell in enumerate(cells):
        padded = cell.ljust(widths[i]) if i < len(widths) else cell
        out.append(c.word(padded) if c is not None and i in COLORED else padded)
    return "  ".join(out).rstrip()
