"""The daemon's REST API on a real kernel, while health checks run: a burst of 1,000 concurrent
status requests, and fuzzing from the OpenAPI document.

Layout (one daemon for the module: a start-up costs tens of seconds under TCG): the daemon in a
director namespace, its API on 127.0.0.1:9180 there (reads; changes refused, no token file) and on
a unix socket (changes allowed); SERVERS on the loopback of a server namespace behind a veth, one
HTTP server process answering on all of them; two services over the same servers, `web` (tcp/80,
HTTP checks of /healthz on 8080) and `dns` (udp/53, TCP checks of 8080), so 2 x len(SERVERS)
distinct probes every INTERVAL.

Check lag is what the daemon itself measures: `mhd_check_lag_seconds`, the histogram of the delay
between each probe's due time and its start (mhd/probing/prober.py), scraped from /metrics before and after
a window. Its bucket bounds include 0.1 s, the benchmark's p99 target, so "p99 <= 100 ms" is read
exactly from the counts; other quantiles are interpolated within buckets, as histogram_quantile
does. A prober that falls more than an interval behind skips the missed slots, which the lag
histogram does not show: the window's probe count against its slots does.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import resource
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import netns as nsh
import pytest
from configs import check_spec, config, service
from daemon_proc import Daemon, wait_for

VIP = "10.0.100.1"
SERVERS = [f"10.77.0.{i}" for i in range(1, 9)]
INTERVAL, TIMEOUT, RISE, FALL = 1.0, 0.9, 2, 3
LISTEN = "127.0.0.1:9180"
BURST_TCP, BURST_UNIX = 900, 100  # concurrent; the unix socket's backlog is 128 (a full one is EAGAIN)
BASELINE = 15.0  # seconds of quiet measured before the burst, for comparison
LAG_TARGET = 0.1  # seconds: bench/README.md's p99 due-time lag target
FUZZ_TCP, FUZZ_UNIX = 150, 60  # examples; each costs a fraction of a second under TCG


@dataclass
class Lab:
    daemon: Daemon
    director: str
    servers_ns: str
    http: subprocess.Popen[bytes]
    declared: str  # ipvsadm_save() with every server up and enabled
    nofile: tuple[int, int]  # RLIMIT_NOFILE before the fixture raised it

    def status(self) -> dict[str, Any]:
        code, ctype, body = self.daemon.request("GET", "/v1/status")
        assert code == 200 and ctype.startswith("application/json"), (code, body[:500])
        return json.loads(body)  # type: ignore[no-any-return]

    def metrics(self) -> Metrics:
        code, _, body = self.daemon.request("GET", "/metrics")
        assert code == 200, body[:500]
        return Metrics.parse(body.decode())


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, repo_root: Path, venv_python: str) -> Iterator[Lab]:
    tmp = tmp_path_factory.mktemp("api")
    factory = nsh.NetnsFactory()
    daemon = http = None
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        director, srv = factory("dir"), factory("srv")
        nsh.ip_batch(srv, [f"addr add {s}/32 dev lo" for s in SERVERS])
        nsh.link_servers(director, srv, "10.66.1", "10.77.0.0/24")
        http = subprocess.Popen(
            ["ip", "netns", "exec", srv, venv_python, str(repo_root / "scripts" / "demo_server.py"),
             "http", "0.0.0.0", "8080"],
        )  # fmt: skip
        daemon = Daemon.make(
            director, tmp, "mhd", venv_python, api_listen=LISTEN, api_socket=tmp / "mhd.sock"
        )
        http_check = check_spec("http", 8080, INTERVAL, TIMEOUT, rise=RISE, fall=FALL, path="/healthz")
        tcp_check = check_spec("tcp", 8080, INTERVAL, TIMEOUT, rise=RISE, fall=FALL)
        daemon.config.write_text(
            config(
                service("web", VIP, 80, SERVERS, protocol="tcp", check=http_check),
                service("dns", VIP, 53, SERVERS, check=tcp_check),
                reconcile_interval="5s",
                api=f"{{listen: '{LISTEN}', socket: '{daemon.api_socket}'}}",
            )
        )  # fmt: skip
        # The client side of 1,000 connections (and the daemon, which inherits the limit) needs
        # more than the usual 1,024 descriptors.
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(limits[0], min(limits[1], 65536)), limits[1]))
        daemon.start()
        lab = Lab(daemon, director, srv, http, "", limits)
        wait_for(lambda: serving_now(lab), 180, "every server up and in IPVS")
        lab.declared = nsh.ipvsadm_save(director)
        assert lab.declared.count("-a ") == 2 * len(SERVERS), lab.declared
        yield lab
    finally:
        if daemon is not None:
            daemon.kill()
        if http is not None:
            http.kill()
            http.wait()
        factory.cleanup()
        resource.setrlimit(resource.RLIMIT_NOFILE, limits)


def serving_now(lab: Lab) -> bool:
    """all_serving, and False while the API refuses connections (Daemon.start waits for the
    daemon's 'ready' line, logged once the API is open; this keeps the fixture independent of it)."""
    try:
        return all_serving(lab.status())
    except ConnectionRefusedError:
        return False


def all_serving(doc: dict[str, Any]) -> bool:
    servers = [s for svc in doc["services"] for s in svc["servers"]]
    return len(servers) == 2 * len(SERVERS) and all(
        s["health"] == "up" and s["in_kernel"] and not s["disabled"] for s in servers
    )


# --- the lag histogram -------------------------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


@dataclass
class Metrics:
    """The samples of one scrape: {(name, label text): value}."""

    samples: dict[tuple[str, str], float]
    at: float

    @classmethod
    def parse(cls, text: str) -> Metrics:
        samples = {}
        for line in text.splitlines():
            m = _SAMPLE.match(line)
            if m:
                samples[(m.group(1), m.group(2) or "")] = float(m.group(3))
        return cls(samples, time.monotonic())

    def total(self, name: str) -> float:
        """Sum over every label set of `name` (e.g. probes of every check type)."""
        return sum(v for (n, _), v in self.samples.items() if n == name)

    def lag_buckets(self) -> list[tuple[float, float]]:
        """[(upper bound, cumulative count)] of mhd_check_lag_seconds, +Inf last."""
        out = []
        for (name, labels), value in self.samples.items():
            if name == "mhd_check_lag_seconds_bucket":
                le = re.search(r'le="([^"]+)"', labels)
                assert le is not None
                out.append((float(le.group(1)), value))
        return sorted(out)


@dataclass
class Window:
    """What the daemon observed between two scrapes."""

    seconds: float
    probes: int  # probes started (lag observations)
    slots: float  # probe slots due in the window: distinct probes x seconds / interval
    buckets: list[tuple[float, int]]  # cumulative lag counts per upper bound
    transitions: int

    @classmethod
    def between(cls, a: Metrics, b: Metrics) -> Window:
        start = dict(a.lag_buckets())
        buckets = [(le, int(count - start.get(le, 0))) for le, count in b.lag_buckets()]
        seconds = b.at - a.at
        return cls(
            seconds=seconds,
            probes=int(b.total("mhd_check_lag_seconds_count") - a.total("mhd_check_lag_seconds_count")),
            slots=b.total("mhd_probes") * seconds / INTERVAL,
            buckets=buckets,
            transitions=int(
                b.total("mhd_health_transitions_total") - a.total("mhd_health_transitions_total")
            ),
        )

    def share_within(self, bound: float) -> float:
        """Share of the window's probes that started at most `bound` after their due time."""
        counts = dict(self.buckets)
        assert bound in counts, f"{bound} is not a bucket bound of mhd_check_lag_seconds"
        return counts[bound] / self.probes if self.probes else 1.0

    def quantile(self, q: float) -> float:
        """histogram_quantile(): linear within the bucket; inf when it falls in the +Inf bucket."""
        rank, lower, below = q * self.probes, 0.0, 0
        for le, count in self.buckets:
            if count >= rank and count > below:
                return le if math.isinf(le) else lower + (le - lower) * (rank - below) / (count - below)
            lower, below = le, count
        return 0.0

    def max_bound(self) -> float:
        """The smallest bucket bound that holds every probe: no lag exceeded it."""
        return next((le for le, count in self.buckets if count >= self.probes), math.inf)

    def describe(self) -> str:
        return (
            f"{self.probes} probes in {self.seconds:.1f}s ({self.slots:.0f} slots due), lag p50"
            f" {self.quantile(0.5) * 1000:.1f} ms, p99 {self.quantile(0.99) * 1000:.1f} ms, all <="
            f" {self.max_bound() * 1000:g} ms, {self.share_within(LAG_TARGET):.1%} within"
            f" {LAG_TARGET * 1000:g} ms, {self.transitions} transitions"
        )


# --- the burst ---------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    content_type: str
    body: bytes
    seconds: float
    transport: str


async def burst(daemon: Daemon, n_tcp: int, n_unix: int) -> list[Answer | BaseException]:
    """n_tcp + n_unix GET /v1/status, each on its own connection, all in flight at once."""
    import aiohttp

    go = asyncio.Event()
    loop = asyncio.get_running_loop()
    timeout = aiohttp.ClientTimeout(total=600)
    assert daemon.api_socket is not None

    async def one(session: aiohttp.ClientSession, url: str, transport: str) -> Answer:
        await go.wait()
        t0 = loop.time()
        async with session.get(url) as response:
            body = await response.read()
        return Answer(response.status, response.content_type, body, loop.time() - t0, transport)

    async with (
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=True), timeout=timeout
        ) as tcp,
        aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(str(daemon.api_socket), limit=0, force_close=True),
            timeout=timeout,
        ) as unix,
    ):
        tasks = [one(tcp, f"http://{LISTEN}/v1/status", "tcp") for _ in range(n_tcp)]
        tasks += [one(unix, "http://mhd/v1/status", "unix") for _ in range(n_unix)]
        futures = [asyncio.ensure_future(t) for t in tasks]
        await asyncio.sleep(0.1)  # every request waits on `go`
        go.set()
        return await asyncio.gather(*futures, return_exceptions=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def warm_up(lab: Lab, timeout: float = 300.0) -> Window:
    """Scrape until the Maglev shares appear: the first scrape starts the model (numpy) in a worker
    thread, whose import competes with the loop for the GIL (under TCG, for many seconds)."""
    first = lab.metrics()
    deadline = time.monotonic() + timeout
    while True:
        last = lab.metrics()
        if any(name == "mhd_server_slot_share" for name, _ in last.samples) or time.monotonic() > deadline:
            return Window.between(first, last)
        time.sleep(2)


def measure_burst(lab: Lab, n_tcp: int, n_unix: int) -> tuple[list[Answer | BaseException], float, Window]:
    """Fire the burst; (answers, seconds until the last answer, what the daemon saw meanwhile)."""
    before = lab.metrics()
    t0 = time.monotonic()
    with nsh.in_netns(lab.director):  # the TCP connections are made in the daemon's namespace
        answers = asyncio.run(burst(lab.daemon, n_tcp, n_unix))
    elapsed = time.monotonic() - t0
    return answers, elapsed, Window.between(before, lab.metrics())


def transitions(doc: dict[str, Any]) -> dict[tuple[str, str], int]:
    return {(svc["name"], s["name"]): s["transitions"] for svc in doc["services"] for s in svc["servers"]}


def test_1000_concurrent_status_requests_break_no_check(lab: Lab, report: Callable[[str], None]) -> None:
    before_doc = lab.status()
    report(f"RLIMIT_NOFILE was {lab.nofile}, raised for the client and the daemon")
    report(f"warm-up (first /metrics, Maglev model): {warm_up(lab).describe()}")
    # Quiet: the lag the daemon sees with no API traffic, on this (emulated, shared) machine.
    m0 = lab.metrics()
    time.sleep(BASELINE)
    report(f"quiet:  {Window.between(m0, lab.metrics()).describe()}")

    # The burst: 1,000 status requests at once, over TCP and the unix socket.
    answers, elapsed, busy = measure_burst(lab, BURST_TCP, BURST_UNIX)
    errors = [a for a in answers if isinstance(a, BaseException)]
    assert not errors, f"{len(errors)} requests failed, e.g. {errors[:3]!r}"
    ok = [a for a in answers if isinstance(a, Answer)]
    latencies = [a.seconds for a in ok]
    report(
        f"burst:  {BURST_TCP} TCP + {BURST_UNIX} unix GET /v1/status in {elapsed:.1f}s; per request"
        f" p50 {percentile(latencies, 0.5):.2f}s p99 {percentile(latencies, 0.99):.2f}s max {max(latencies):.2f}s"
    )
    report(f"during: {busy.describe()}")

    # Every request: 200, JSON, the whole document, every server up.
    assert len(ok) == BURST_TCP + BURST_UNIX
    bad = [(a.transport, a.status, a.content_type, a.body[:200]) for a in ok if a.status != 200 or a.content_type != "application/json"]  # fmt: skip
    assert not bad, f"{len(bad)} bad answers, e.g. {bad[:3]}"
    for a in ok:
        doc = json.loads(a.body)
        assert [svc["name"] for svc in doc["services"]] == ["web", "dns"]
        assert all_serving(doc), doc
        assert doc["daemon"]["pid"] == before_doc["daemon"]["pid"]

    # The checks kept running: no transition, no server down, IPVS untouched.
    after_doc = lab.status()
    assert all_serving(after_doc)
    assert busy.transitions == 0 and transitions(after_doc) == transitions(before_doc)
    assert nsh.ipvsadm_save(lab.director) == lab.declared
    # How late the probes ran is reported above, not asserted: it measures the machine as much as
    # mhd (a loaded CI host slows the emulated guest several times over), so the p99 <= 100 ms target
    # is judged by bench/bench_api.py with its reference. What must hold under any load is above: no
    # false failure, no transition, IPVS untouched.
    report(f"lag target {LAG_TARGET * 1000:.0f} ms met by {busy.share_within(LAG_TARGET):.1%} of probes;"
           f" {busy.probes} probes for {busy.slots} slots due")


# --- fuzzing -----------------------------------------------------------------------------------------


def steer(doc: dict[str, Any], names: list[str], servers: list[str], clients: list[str]) -> dict[str, Any]:
    """The document with the service, server and client parameters restricted to real values, so
    that its valid requests reach real services and servers (drains, tables, predictions) rather
    than 404s; fuzzed together with the document as served."""
    doc = json.loads(json.dumps(doc))
    known = {"name": names, "server": servers}
    for item in doc["paths"].values():
        for op in item.values():
            for param in op.get("parameters", []):
                if param["name"] in known:
                    param["schema"] = {"type": "string", "enum": known[param["name"]]}
                elif param["name"] == "client":
                    param["schema"]["items"] = {"type": "string", "enum": clients}
    return doc


def fuzz(
    docs: list[dict[str, Any]], examples: int, send: Callable[[Any], tuple[int, str, bytes]]
) -> dict[int, int]:
    """`examples` requests generated from `docs` (valid and invalid ones, every operation); asserts
    that none gets a 5xx or a non-JSON error. Returns how many answers of each status."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from schemathesis.generation import GenerationMode

    strategies = [
        op.ok().as_strategy(generation_mode=mode)
        for doc in docs
        for op in schemathesis.openapi.from_dict(doc).get_all_operations()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    ]
    seen: dict[int, int] = {}

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(st.one_of(strategies))
    def run(case: Any) -> None:
        status, ctype, body = send(case)
        seen[status] = seen.get(status, 0) + 1
        where = (case.method, case.formatted_path, case.query, status, body[:300])
        assert status < 500, where
        assert ctype.startswith(("application/json", "text/plain", "text/html")), where
        if ctype.startswith("application/json"):
            json.loads(body)

    run()
    return seen


def prepared(case: Any, base_url: str) -> tuple[str, str, bytes | None, dict[str, str]]:
    """(method, path with query, body, headers) of a generated case, as requests would send it."""
    import requests

    kwargs = case.as_transport_kwargs(base_url=base_url)
    kwargs.pop("cookies", None)
    request = requests.Request(**kwargs).prepare()
    body = request.body.encode() if isinstance(request.body, str) else request.body
    headers = {k: v for k, v in request.headers.items() if k.lower() != "connection"}
    return request.method or "GET", request.path_url, body, headers


def test_fuzzing_from_the_openapi_document_finds_no_5xx(lab: Lab, report: Callable[[str], None]) -> None:
    pytest.importorskip("schemathesis")  # before any request: its import takes a minute under TCG
    d = lab.daemon
    code, _, body = d.request("GET", "/v1/openapi.json")
    assert code == 200
    served = json.loads(body)
    repo_doc = json.loads((Path(__file__).resolve().parents[2] / "docs" / "openapi.json").read_text())
    assert served == repo_doc, "the daemon serves another document than docs/openapi.json"
    names = [svc["name"] for svc in lab.status()["services"]]
    steered = steer(served, names, [*SERVERS, f"{SERVERS[0]}:80", f"{SERVERS[1]}:53"], ["198.51.100.7:4000", "198.51.100.8"])  # fmt: skip
    reconciles = lab.status()["daemon"]["reconciles"]

    # TCP without a token file: every read answered, every change refused, IPVS untouched.
    def over_tcp(case: Any) -> tuple[int, str, bytes]:
        method, path, content, headers = prepared(case, "http://mhd")
        return d.request(method, path, body=content, headers=headers)

    t0 = time.monotonic()
    tcp = fuzz([served, steered], FUZZ_TCP, over_tcp)
    report(f"fuzz over TCP: {FUZZ_TCP} examples in {time.monotonic() - t0:.0f}s, statuses {dict(sorted(tcp.items()))}")  # fmt: skip
    assert tcp.get(200) and tcp.get(403) and tcp.get(404), tcp
    assert nsh.ipvsadm_save(lab.director) == lab.declared
    assert all_serving(lab.status())

    # The unix socket: changes allowed, so generated drains and reloads really happen.
    def over_unix(case: Any) -> tuple[int, str, bytes]:
        method, path, content, headers = prepared(case, "http://mhd")
        return d.request(method, path, body=content, headers=headers, unix=True)

    t0 = time.monotonic()
    unix = fuzz([served, steered], FUZZ_UNIX, over_unix)
    report(f"fuzz over the unix socket: {FUZZ_UNIX} examples in {time.monotonic() - t0:.0f}s, statuses {dict(sorted(unix.items()))}")  # fmt: skip
    assert unix.get(200), unix

    # Coherent: the daemon lives, and after its next passes IPVS holds exactly the enabled servers
    # (all healthy), whatever the fuzzer drained.
    assert d.alive()
    code, _, body = d.request("GET", "/healthz")
    assert code == 200, body

    def coherent() -> bool:
        doc = lab.status()
        return doc["daemon"]["reconciles"] > reconciles and all(
            s["health"] == "up" and s["in_kernel"] == (not s["disabled"])
            for svc in doc["services"]
            for s in svc["servers"]
        )

    wait_for(coherent, 60, "IPVS to hold exactly the enabled servers")
    drained = [(svc["name"], s["name"]) for svc in lab.status()["services"] for s in svc["servers"] if s["disabled"]]  # fmt: skip
    report(f"servers left drained by the fuzzer: {len(drained)}")
    for name, server in drained:
        code, _, body = d.request("POST", f"/v1/services/{name}/servers/{server}/enable", unix=True)
        assert code == 200, body
    wait_for(lambda: nsh.ipvsadm_save(lab.director) == lab.declared, 60, "IPVS back to the declared state")
    # The status follows (it shows the kernel as the last pass dumped it, before that pass's writes).
    t0 = time.monotonic()
    wait_for(lambda: all_serving(lab.status()), 60, "the status to show every server in IPVS")
    report(f"status caught up with IPVS {time.monotonic() - t0:.1f}s after it was restored")
    log = d.text()
    assert "Traceback" not in log and "internal error" not in log, log[-3000:]
