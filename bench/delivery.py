"""Delivery throughput and latency of a real Clarion, end to end (issue 3, "Numbers").

Throughput: N APNs bindings (default 100,000) share one tag; one notification to that tag is
timed from just before its POST to the first poll that sees it `completed`, giving
N / seconds deliveries/s. The provider side is the in-process sandbox emulator
(`clarion serve --sandbox`) or an nginx HTTP/2 sink (../shared/tools/provider-sink.sh) that an
apn token credential's ProviderUrl points at; with `--engine postgresql` the API runs as
`clarion serve --no-workers` and `--workers` `clarion worker` processes deliver. Afterwards it
checks that every delivery is `sent` once (the Deliveries API) and that the sink answered
exactly N requests, and reports the CPU split (from /proc) and the peak RSS of every Clarion
process.

Latency: on the idle server, notifications to one identity with one APNs binding: the time from
the 201 to the first request reaching an APNs emulator run inside this script, and the time
until the Deliveries API shows the delivery `sent` on the measured service (an upper bound).

Everything runs on 127.0.0.1 in temporary directories (and a fresh PostgreSQL database) that
are removed at the end; results are printed and written to bench/results/. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import json
import os
import queue
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
from api_writes import (
    CLARION,
    RESULTS,
    START_TIMEOUT,
    Server,
    create_account,
    postgres_database,
    server_env,
)
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from clarion.emulators.apns import ApnsEmulator

SINK_SCRIPT = Path(__file__).resolve().parents[2] / "shared" / "tools" / "provider-sink.sh"
PY_SPY = str(Path(sys.executable).parent / "py-spy")
TICK = os.sysconf("SC_CLK_TCK")
ALL_CPUS = f"0-{(os.cpu_count() or 1) - 1}"
KEY_ID, TEAM_ID, BUNDLE_ID = "BENCHKEY01", "BENCHTEAM1", "com.example.clarion.bench"
TAG = "delivery-bench"
# Deliveries in these states are not finished yet.
OPEN_STATES = ("pending", "sending")


# --- processes -----------------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports (all sockets held open until every port is chosen)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def _pump(stream: Any, lines: queue.Queue[str | None], keep: list[str] | None = None) -> None:
    for line in iter(stream.readline, ""):
        lines.put(line)
        if keep is not None:
            keep.append(line.rstrip())
    lines.put(None)


@dataclass
class Role:
    """One Clarion process: `serve` (API and workers), `api` (--no-workers) or `worker-N`."""

    name: str
    server: Server
    stderr: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.server.process.pid


@contextlib.contextmanager
def clarion(
    name: str, arguments: list[str], env: dict[str, str], *, port: int, cpus: str | None
) -> Iterator[Role]:
    """A `clarion …` subprocess (pinned with taskset to `cpus`), terminated on exit."""
    # Always through taskset: children inherit this script's own pinning otherwise.
    command = ["taskset", "-c", cpus or ALL_CPUS, CLARION, *arguments]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    role = Role(name, Server(process=process, port=port, started_at=time.perf_counter()))
    threading.Thread(target=_pump, args=(process.stdout, role.server.lines), daemon=True).start()
    threading.Thread(
        target=_pump, args=(process.stderr, queue.Queue(), role.stderr), daemon=True
    ).start()
    try:
        yield role
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        if role.stderr:
            print(f"{name} stderr (last lines):", *role.stderr[-10:], sep="\n  ", file=sys.stderr)


@dataclass
class Sink:
    """The nginx provider sink, in a directory and on ports of its own."""

    script: Path
    env: dict[str, str]
    h2_port: int

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.h2_port}"

    @property
    def cert(self) -> Path:
        return Path(self.env["SINK_DIR"]) / "cert.pem"

    def run(self, command: str) -> str:
        done = subprocess.run(
            ["bash", str(self.script), command],
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return done.stdout.strip()

    def count(self) -> int:
        return int(self.run("count"))

    def pids(self) -> list[int]:
        """The nginx master and its workers."""
        try:
            master = int((Path(self.env["SINK_DIR"]) / "nginx.pid").read_text())
        except (OSError, ValueError):
            return []
        return [master, *(pid for pid, parent in _parents().items() if parent == master)]


@contextlib.contextmanager
def provider_sink(script: Path, directory: Path, *, cpu: str | None) -> Iterator[Sink]:
    h2, h1, status = free_ports(3)
    env = {
        **os.environ,
        "SINK_DIR": str(directory),
        "SINK_H2_PORT": str(h2),
        "SINK_H1_PORT": str(h1),
        "SINK_STATUS_PORT": str(status),
    }
    env["SINK_CPU"] = cpu or ALL_CPUS
    sink = Sink(script=script, env=env, h2_port=h2)
    print(sink.run("start"), flush=True)
    try:
        yield sink
    finally:
        sink.run("stop")


# --- /proc: CPU time and memory ------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from field 3 (state) on; None once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def process_cpu(pid: int, *, reaped_children: bool = False) -> float:
    """utime + stime (all threads) in seconds, plus cutime + cstime if asked."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / TICK


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _parents() -> dict[int, int]:
    parents = {}
    for pid in _pids():
        fields = _stat_fields(pid)
        if fields is not None:
            parents[pid] = int(fields[1])
    return parents


def _postgres_processes(database: str | None) -> tuple[dict[int, float], dict[int, float]]:
    """CPU seconds of every postgres process (with the children it reaped, so backends that
    exit are not lost), and of the backends serving `database` alone."""
    every: dict[int, float] = {}
    ours: dict[int, float] = {}
    for pid in _pids():
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() != "postgres":
                continue
            title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        every[pid] = process_cpu(pid, reaped_children=True)
        if database and f" {database} " in title:
            ours[pid] = process_cpu(pid)
    return every, ours


def _cpu_lines() -> dict[str, tuple[float, float]]:
    """Per CPU (`cpu0`, `cpu1`, …): (busy seconds, all seconds) since boot, from /proc/stat."""
    result = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        # user nice system idle iowait irq softirq steal
        ticks = [int(v) for v in values[:8]]
        result[name] = ((sum(ticks) - ticks[3] - ticks[4]) / TICK, sum(ticks) / TICK)
    return result


@dataclass
class CpuSnapshot:
    at: float
    clarion: dict[str, float]
    postgres: dict[int, float]
    postgres_ours: dict[int, float]
    nginx: dict[int, float]
    bench: float
    cpus: dict[str, tuple[float, float]]


def cpu_snapshot(roles: list[Role], sink: Sink | None, database: str | None) -> CpuSnapshot:
    every, ours = _postgres_processes(database) if database else ({}, {})
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return CpuSnapshot(
        at=time.perf_counter(),
        clarion={role.name: process_cpu(role.pid) for role in roles},
        postgres=every,
        postgres_ours=ours,
        nginx={pid: process_cpu(pid) for pid in (sink.pids() if sink else [])},
        bench=usage.ru_utime + usage.ru_stime,
        cpus=_cpu_lines(),
    )


def _grown(before: dict[Any, float], after: dict[Any, float]) -> float:
    return sum(value - before.get(key, 0.0) for key, value in after.items())


def cpu_split(before: CpuSnapshot, after: CpuSnapshot, deliveries: int) -> dict[str, Any]:
    """CPU seconds per party over the interval, with cores used and µs per delivery."""
    wall = after.at - before.at
    seconds: dict[str, float] = {
        f"clarion {name}": value - before.clarion.get(name, 0.0)
        for name, value in after.clarion.items()
    }
    seconds["clarion (total)"] = sum(seconds.values())
    if after.postgres:
        seconds["postgresql (our database's backends)"] = _grown(
            before.postgres_ours, after.postgres_ours
        )
        seconds["postgresql (all processes)"] = _grown(before.postgres, after.postgres)
    if after.nginx:
        seconds["nginx sink"] = _grown(before.nginx, after.nginx)
    seconds["this script"] = after.bench - before.bench
    busy = {name: after.cpus[name][0] - before.cpus[name][0] for name in after.cpus}
    seconds["machine busy"] = sum(busy.values())
    ours = (
        seconds["clarion (total)"]
        + seconds.get("postgresql (all processes)", 0.0)
        + seconds.get("nginx sink", 0.0)
        + seconds["this script"]
    )
    seconds["everything else"] = max(0.0, seconds["machine busy"] - ours)
    return {
        "wall_s": round(wall, 3),
        "parties": {
            name: {
                "cpu_s": round(value, 2),
                "cores": round(value / wall, 2) if wall else 0.0,
                "us_per_delivery": round(value * 1e6 / deliveries, 1) if deliveries else None,
            }
            for name, value in seconds.items()
        },
        "per_cpu_busy": {name: round(value / wall, 2) for name, value in busy.items()},
    }


def _status_kb(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class RssSampler(threading.Thread):
    """Samples VmRSS of every Clarion process every `interval` s; peaks kept per phase."""

    def __init__(self, roles: list[Role], interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.roles = roles
        self.interval = interval
        self.phase = "start-up"
        self.peaks: dict[str, dict[str, int]] = collections.defaultdict(dict)
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            for role in self.roles:
                rss = _status_kb(role.pid, "VmRSS")
                if rss is not None:
                    peaks = self.peaks[self.phase]
                    peaks[role.name] = max(peaks.get(role.name, 0), rss)
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


# --- py-spy ----------------------------------------------------------------------------------


class Profiler:
    """`py-spy record --format raw` on each Clarion process while the notification is delivered."""

    def __init__(self, roles: list[Role], prefix: str, rate: int) -> None:
        self.rate = rate
        self.outputs = {role.name: RESULTS / f"{prefix}-{role.name}.pyspy.txt" for role in roles}
        self._pids = {role.name: role.pid for role in roles}
        self._spies: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        RESULTS.mkdir(exist_ok=True)
        for name, pid in self._pids.items():
            self._spies.append(
                subprocess.Popen(
                    [
                        *(PY_SPY, "record", "--pid", str(pid), "--format", "raw", "--threads"),
                        *("--nonblocking", "--rate", str(self.rate)),
                        *("--output", str(self.outputs[name])),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )

    def stop(self) -> dict[str, Any]:
        for spy in self._spies:
            spy.send_signal(signal.SIGINT)
        for spy in self._spies:
            try:
                spy.wait(timeout=60)
            except subprocess.TimeoutExpired:
                spy.kill()
        return {
            name: summarize_profile(path, self.rate)
            for name, path in self.outputs.items()
            if path.exists()
        }


def _short(frame: str) -> str:
    for marker in ("site-packages/", "/src/", "lib/python3.11/"):
        if marker in frame:
            name, _, location = frame.partition(" (")
            return f"{name} ({location.split(marker, 1)[1]}"
    return frame


def summarize_profile(path: Path, rate: int, top: int = 25) -> dict[str, Any]:
    """Samples per thread, the hottest lines (self) and functions (inclusive), as shares of all
    samples and as CPU seconds (samples / rate)."""
    threads: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = frames.pop(0) if frames and frames[0].startswith(("thread ", "process ")) else "?"
        total += count
        threads[thread] += count
        if frames:
            leaves[_short(frames[-1])] += count
        for function in {_short(f).rsplit(":", 1)[0] + ")" for f in frames}:
            inclusive[function] += count

    def rows(counter: collections.Counter[str]) -> list[dict[str, Any]]:
        return [
            {"share": round(n / total, 4), "cpu_s": round(n / rate, 2), "frame": frame}
            for frame, n in counter.most_common(top)
        ]

    return {
        "file": str(path),
        "samples": total,
        "threads": rows(threads),
        "self": rows(leaves),
        "inclusive": rows(inclusive),
    }


# --- the API --------------------------------------------------------------------------------


class Api:
    """Basic-auth form POSTs and GETs with aiohttp; bodies decoded as JSON when they are."""

    def __init__(self, base_url: str, auth: tuple[str, str], connections: int) -> None:
        self.base_url = base_url
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        self._headers = {"Authorization": f"Basic {token}"}
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Api:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._connections),
            timeout=aiohttp.ClientTimeout(total=120),
            headers=self._headers,
        )
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._session is not None
        await self._session.close()

    async def call(
        self, method: str, path: str, fields: list[tuple[str, str]] | None = None
    ) -> tuple[int, Any]:
        assert self._session is not None
        url = path if path.startswith("http") else self.base_url + path
        data = None if fields is None else urlencode(fields)
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if data else None
        async with self._session.request(method, url, data=data, headers=headers) as response:
            body = await response.read()
        try:
            return response.status, json.loads(body)
        except ValueError:
            return response.status, body.decode(errors="replace")

    async def expect(
        self, status: int, method: str, path: str, fields: list[tuple[str, str]] | None = None
    ) -> Any:
        got, body = await self.call(method, path, fields)
        if got != status:
            raise RuntimeError(f"{method} {path}: expected {status}, got {got}: {body}")
        return body


def binding_fields(number: int) -> list[tuple[str, str]]:
    """Binding `number` of the tag: its own identity, a 64-hex-digit APNs token that starts with
    `0` (never one of the sandbox's scripted `dead`/`bad`/`slow` tokens)."""
    return [
        ("Identity", f"user-{number:07d}"),
        ("BindingType", "apn"),
        ("Address", f"{number:064x}"),
        ("Tag", TAG),
    ]


async def create_bindings(
    api: Api,
    service: str,
    count: int,
    concurrency: int,
    fields: Callable[[int], list[tuple[str, str]]] = binding_fields,
) -> float:
    """POST `count` bindings (`fields(n)` each), `concurrency` at a time (retrying a failed one
    twice); seconds."""
    numbers = iter(range(count))
    failures: list[str] = []
    done = 0
    started = time.perf_counter()
    step = max(1, count // 10)

    async def work() -> None:
        nonlocal done
        for number in numbers:
            for _ in range(3):
                try:
                    status, body = await api.call(
                        "POST", f"/v1/Services/{service}/Bindings", fields(number)
                    )
                except (aiohttp.ClientError, TimeoutError) as exc:
                    status, body = 0, repr(exc)
                if status == 201:
                    break
            else:
                failures.append(f"binding {number}: {status} {str(body)[:200]}")
                continue
            done += 1
            if done % step == 0:
                elapsed = time.perf_counter() - started
                print(f"  {done:>9,} bindings, {done / elapsed:,.0f}/s", flush=True)

    await asyncio.gather(*(work() for _ in range(concurrency)))
    if failures:
        raise RuntimeError(f"{len(failures)} bindings not created, e.g. {failures[:3]}")
    return time.perf_counter() - started


@dataclass
class Completion:
    seconds: float  # POST sent → the poll that saw `completed` answered
    resolution: float  # how long before that the previous poll had found it unfinished
    notification: dict[str, Any]
    polls: int
    trace: list[dict[str, Any]]


async def wait_until_completed(
    api: Api,
    path: str,
    *,
    expected: int,
    posted: float,
    give_up: float,
    sink: Sink | None,
    sink_before: int = 0,
) -> Completion:
    """Poll until the notification is `completed`, asking the measured server little.

    Fetching the notification counts its deliveries (≈ 1 µs of server CPU per delivery on
    SQLite, 80 ms at 100,000), so it is polled every 10 ms only near the end. Until then the
    progress comes from the sink's request count (nginx stub_status) or, without a sink, from
    the notification polled at doubling intervals during the fan-out and then from the last
    delivery alone (a point lookup): deliveries are claimed oldest first, so the last one
    created is among the last sent.
    """
    trace: list[dict[str, Any]] = []

    def elapsed() -> float:
        if time.perf_counter() - posted > give_up:
            raise RuntimeError(f"not completed within {give_up:.0f} s: {trace[-3:]}")
        return time.perf_counter() - posted

    previous = posted  # when a poll last found work left
    if sink is not None:
        mark = 0.0
        while True:
            asked = time.perf_counter()
            received = await asyncio.to_thread(sink.count) - sink_before
            if received >= expected:
                break
            previous = asked
            if elapsed() >= mark:
                trace.append({"t": round(elapsed(), 3), "sink": received})
                mark = elapsed() + 1.0
            # Each count forks bash and curl (≈ 10 ms of CPU): half the predicted time left,
            # 50 ms to 1 s.
            left = (expected - received) * elapsed() / received if received else 0.2
            await asyncio.sleep(min(1.0, max(0.05, left / 2)))
    # Without a sink: doubling waits while it fans out, then the last delivery.
    wait, watch_last = (0.01, False) if sink is not None else (0.02, True)
    last_delivery: str | None = None
    while True:
        if last_delivery is not None:
            asked = time.perf_counter()
            delivery = await api.expect(200, "GET", last_delivery)
            if delivery["status"] in OPEN_STATES:
                previous = asked
                elapsed()
                await asyncio.sleep(0.05)
                continue
            last_delivery, wait = None, 0.01
            trace.append({"t": round(elapsed(), 3), "last_delivery": delivery["status"]})
        asked = time.perf_counter()
        status, body = await api.call("GET", path)
        answered = time.perf_counter()
        if status != 200:
            raise RuntimeError(f"GET {path}: {status} {body}")
        trace.append(
            {
                "t": round(answered - posted, 3),
                "poll_ms": round((answered - asked) * 1000, 1),
                "status": body["status"],
                "deliveries": body["deliveries"],
            }
        )
        if body["status"] == "completed":
            return Completion(answered - posted, answered - previous, body, len(trace), trace)
        previous = asked
        if watch_last and body["status"] == "dispatched":
            # Fanned out: from now on watch the delivery with the highest id.
            watch_last = False
            newest = f"{path}/Deliveries?PageSize=1&PageToken=PB{10**18 - 1}"
            page = await api.expect(200, "GET", newest)
            last_delivery = f"{path}/Deliveries/{page['deliveries'][0]['sid']}"
            continue
        elapsed()
        await asyncio.sleep(wait)
        if watch_last:
            wait = min(wait * 2, 1.0)


async def deliveries_of(api: Api, path: str) -> AsyncIterator[dict[str, Any]]:
    """Every delivery of the notification at `path`, through the Deliveries API's pages."""
    url: str | None = f"{path}/Deliveries?PageSize=1000"
    while url:
        body = await api.expect(200, "GET", url)
        for item in body["deliveries"]:
            yield item
        url = body["meta"]["next_page_url"]


async def verify_deliveries(api: Api, path: str) -> dict[str, Any]:
    """Walk every delivery of the notification: statuses, attempts, distinct addresses and
    provider ids (a delivery sent twice would show as attempts > 1)."""
    statuses: collections.Counter[str] = collections.Counter()
    attempts: collections.Counter[int] = collections.Counter()
    addresses: set[str] = set()
    provider_ids: set[str] = set()
    rows = 0
    async for item in deliveries_of(api, path):
        rows += 1
        statuses[item["status"]] += 1
        attempts[item["attempts"]] += 1
        addresses.add(item["address"])
        if item["provider_sid"]:
            provider_ids.add(item["provider_sid"])
    return {
        "rows": rows,
        "statuses": dict(statuses),
        "attempts": {str(k): v for k, v in sorted(attempts.items())},
        "distinct_addresses": len(addresses),
        "distinct_provider_ids": len(provider_ids),
    }


async def wait_for_quiet(roles: list[Role], longest: float, cores: float) -> dict[str, Any]:
    """Wait (up to `longest` s) for a second in which the processes that are not Clarion's use
    under `cores` of CPU: other people's tests and benches change the figures several-fold."""
    started = time.perf_counter()
    while True:
        before_cpus, before_ours = _cpu_lines(), sum(process_cpu(r.pid) for r in roles)
        await asyncio.sleep(1.0)
        after_cpus, after_ours = _cpu_lines(), sum(process_cpu(r.pid) for r in roles)
        busy = sum(after_cpus[n][0] - before_cpus[n][0] for n in after_cpus)
        others = max(0.0, busy - (after_ours - before_ours))
        waited = time.perf_counter() - started
        if others < cores or waited >= longest:
            if others >= cores:
                print(f"  the machine is still busy ({others:.2f} cores); measuring anyway")
            return {"cores": round(others, 2), "waited_s": round(waited, 1)}


# --- latency ---------------------------------------------------------------------------------


def _quantiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "min_ms": round(ordered[0] * 1000, 1),
        "median_ms": round(statistics.median(ordered) * 1000, 1),
        "p90_ms": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))] * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


async def first_request_latency(
    api: Api, service: str, credential: str, emulator: ApnsEmulator, runs: int, gap: float
) -> list[float]:
    """201 → the emulator has received the request, per run. Each binding names `credential`
    (aimed at the emulator), so the measured service, with its 100,000 other bindings, sends
    there; the emulator runs in this event loop and a task watches its request count every
    0.5 ms."""
    results = []
    for run in range(runs):
        identity = f"latency-{run}"
        await api.expect(
            201,
            "POST",
            f"/v1/Services/{service}/Bindings",
            [
                ("Identity", identity),
                ("BindingType", "apn"),
                ("Address", f"e{run + 1:063x}"),
                ("CredentialSid", credential),
            ],
        )
        await asyncio.sleep(gap)
        before = emulator.requests
        arrived = asyncio.get_running_loop().create_future()

        async def watch(before: int = before, arrived: asyncio.Future[float] = arrived) -> None:
            while emulator.requests == before:  # noqa: ASYNC110 - the emulator has no event
                await asyncio.sleep(0.0005)
            arrived.set_result(time.perf_counter())

        watcher = asyncio.create_task(watch())
        await api.expect(
            201,
            "POST",
            f"/v1/Services/{service}/Notifications",
            [("Identity", identity), ("Body", "latency")],
        )
        created = time.perf_counter()
        try:
            results.append(await asyncio.wait_for(arrived, 10) - created)
        finally:
            watcher.cancel()
    return results


async def sent_latency(
    api: Api, service: str, runs: int, gap: float
) -> tuple[list[float], dict[str, list[float]]]:
    """201 → the Deliveries API shows the delivery `sent`, polled every 5 ms (an upper bound of
    the time to the provider request: it includes the answer and storing the result); and when
    each status (none yet, pending, sending) was last seen, to tell where the time went."""
    results = []
    last_seen: dict[str, list[float]] = collections.defaultdict(list)
    for run in range(runs):
        identity = f"latency-main-{run}"
        await api.expect(
            201,
            "POST",
            f"/v1/Services/{service}/Bindings",
            [("Identity", identity), ("BindingType", "apn"), ("Address", f"f{run + 1:063x}")],
        )
        await asyncio.sleep(gap)
        body = await api.expect(
            201,
            "POST",
            f"/v1/Services/{service}/Notifications",
            [("Identity", identity), ("Body", "latency")],
        )
        created = time.perf_counter()
        # Newest first (a page before the largest id): the delivery is the table's last row,
        # so this stays a short index walk however many deliveries the table holds.
        path = (
            f"/v1/Services/{service}/Notifications/{body['sid']}/Deliveries"
            f"?PageSize=1&PageToken=PB{10**18 - 1}"
        )
        seen: dict[str, float] = {}
        while True:
            page = await api.expect(200, "GET", path)
            state = page["deliveries"][0]["status"] if page["deliveries"] else "none"
            if state not in (*OPEN_STATES, "none"):
                break
            seen[state] = time.perf_counter() - created
            if time.perf_counter() - created > 10:
                raise RuntimeError(f"latency notification {body['sid']} not sent within 10 s")
            await asyncio.sleep(0.005)
        results.append(time.perf_counter() - created)
        for state, at in seen.items():
            last_seen[state].append(at)
        if page["deliveries"][0]["status"] != "sent":
            raise RuntimeError(f"latency delivery ended {page['deliveries'][0]}")
    return results, last_seen


# --- the run ---------------------------------------------------------------------------------


@dataclass
class Setup:
    args: argparse.Namespace
    roles: list[Role]
    api_url: str
    auth: tuple[str, str]
    sink: Sink | None
    database: str | None
    emulator: ApnsEmulator
    signing_key_pem: str


async def apn_credential(api: Api, setup: Setup, url: str, name: str) -> str:
    body = await api.expect(
        201,
        "POST",
        "/v1/Credentials",
        [
            ("Type", "apn"),
            ("FriendlyName", name),
            ("PrivateKey", setup.signing_key_pem),
            ("KeyId", KEY_ID),
            ("TeamId", TEAM_ID),
            ("BundleId", BUNDLE_ID),
            ("ProviderUrl", url),
        ],
    )
    return str(body["sid"])


async def service_with(api: Api, name: str, credential: str | None) -> str:
    fields = [("FriendlyName", name)]
    if credential is not None:
        fields.append(("ApnCredentialSid", credential))
    body = await api.expect(201, "POST", "/v1/Services", fields)
    return str(body["sid"])


async def measure(
    api: Api, setup: Setup, service: str, sampler: RssSampler, number: int
) -> dict[str, Any]:
    """One notification to the tag, timed from its POST to `completed`, and checked."""
    args = setup.args
    result: dict[str, Any] = {
        "others_before_post": await wait_for_quiet(setup.roles, args.quiet_wait, args.quiet_cores),
        "load_average_before": os.getloadavg(),
    }
    sink_before = setup.sink.count() if setup.sink else 0
    profiler = (
        Profiler(setup.roles, f"{_name(args)}-{number}", args.profile_rate)
        if args.profile
        else None
    )
    if profiler is not None:
        profiler.start()
        await asyncio.sleep(1.0)  # py-spy attaches before the clock starts
    sampler.phase = f"delivery {number}"
    before = cpu_snapshot(setup.roles, setup.sink, setup.database)
    posted = time.perf_counter()
    created = await api.expect(
        201,
        "POST",
        f"/v1/Services/{service}/Notifications",
        [("Tag", TAG), ("Title", "Clarion bench"), ("Body", f"Hello from the bench, {number}")],
    )
    answered = time.perf_counter() - posted
    path = f"/v1/Services/{service}/Notifications/{created['sid']}"
    completion = await wait_until_completed(
        api,
        path,
        expected=args.count,
        posted=posted,
        give_up=args.timeout,
        sink=setup.sink,
        sink_before=sink_before,
    )
    after = cpu_snapshot(setup.roles, setup.sink, setup.database)
    sampler.phase = f"checks {number}"
    result["load_average_after"] = os.getloadavg()
    if profiler is not None:
        result["profile"] = profiler.stop()
    counts = completion.notification["deliveries"]
    result["delivery"] = {
        "notification": created["sid"],
        "post_201_ms": round(answered * 1000, 1),
        "seconds": round(completion.seconds, 3),
        "resolution_s": round(completion.resolution, 3),
        "deliveries_per_second": round(args.count / completion.seconds, 1),
        "deliveries": counts,
        "lost": args.count - counts.get("sent", 0),
        "date_created": completion.notification["date_created"],
        "date_completed": completion.notification["date_completed"],
        "polls": completion.polls,
        "trace": completion.trace,
    }
    result["cpu"] = cpu_split(before, after, args.count)
    if setup.sink is not None:
        sink_after = setup.sink.count()
        received = sink_after - sink_before
        result["sink"] = {
            "before": sink_before,
            "after": sink_after,
            "received": received,
            "duplicates": max(0, received - args.count),
            "lost": max(0, args.count - received),
        }
    if args.verify:
        result["verify"] = await verify_deliveries(api, path)
    print_run(number, result)
    return result


async def run(setup: Setup, sampler: RssSampler) -> dict[str, Any]:
    args = setup.args
    emulator = setup.emulator
    await emulator.start()
    emulator.register_key(
        key_id=KEY_ID,
        team_id=TEAM_ID,
        public_key_pem=serialization.load_pem_private_key(setup.signing_key_pem.encode(), None)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
    )
    report: dict[str, Any] = {}
    try:
        async with Api(setup.api_url, setup.auth, args.concurrency) as api:
            sink_credential = (
                await apn_credential(api, setup, setup.sink.url, "bench sink")
                if setup.sink is not None
                else None
            )
            service = await service_with(api, "delivery bench", sink_credential)
            emulator_credential = await apn_credential(api, setup, emulator.url, "bench emulator")

            sampler.phase = "bindings"
            print(f"creating {args.count:,} bindings ({args.concurrency} at a time)", flush=True)
            seconds = await create_bindings(api, service, args.count, args.concurrency)
            report["bindings"] = {
                "count": args.count,
                "seconds": round(seconds, 2),
                "per_second": round(args.count / seconds, 1),
            }
            print(f"  created in {seconds:.1f} s ({args.count / seconds:,.0f}/s)", flush=True)
            await asyncio.sleep(args.settle)

            report["runs"] = [
                await measure(api, setup, service, sampler, number)
                for number in range(1, args.repeat + 1)
            ]
            if args.latency_runs:
                sampler.phase = "latency"
                first = await first_request_latency(
                    api,
                    service,
                    emulator_credential,
                    emulator,
                    args.latency_runs,
                    args.latency_gap,
                )
                sent, last_seen = await sent_latency(
                    api, service, args.latency_runs, args.latency_gap
                )
                report["latency"] = {
                    "runs": args.latency_runs,
                    "first_request": _quantiles(first),
                    "sent_visible": _quantiles(sent),
                    "sent_visible_last_seen_median_ms": {
                        state: round(statistics.median(times) * 1000, 1)
                        for state, times in last_seen.items()
                    },
                }
            report["rss_kb"] = {
                "peaks": {phase: dict(peaks) for phase, peaks in sampler.peaks.items()},
                "hwm": {role.name: _status_kb(role.pid, "VmHWM") for role in setup.roles},
            }
    finally:
        await emulator.close()
    return report


# --- output ----------------------------------------------------------------------------------


def _name(args: argparse.Namespace) -> str:
    if args.name:
        return str(args.name)
    suffix = f"-w{args.workers}" if args.engine == "postgresql" else ""
    return f"delivery-{args.engine}-{args.provider}{suffix}"


def print_parties(cpu: dict[str, Any]) -> None:
    """A line per party of a `cpu_split`: its CPU seconds, cores and µs per delivery."""
    for name, party in cpu["parties"].items():
        print(
            f"  {name:<38} {party['cpu_s']:7.2f} s  {party['cores']:5.2f} cores  "
            f"{party['us_per_delivery']:7.1f} µs/delivery"
        )


def print_profiles(profiles: dict[str, Any], titles: Sequence[str]) -> None:
    """The top 15 frames of each `Profiler.stop` profile, in the tables named by `titles`."""
    for name, profile in profiles.items():
        print(f"py-spy, clarion {name}: {profile['samples']:,} samples ({profile['file']})")
        for title in titles:
            print(f"  {title}:")
            for row in profile[title][:15]:
                print(f"    {row['share']:6.1%}  {row['cpu_s']:6.2f} s  {row['frame']}")


def print_run(number: int, run: dict[str, Any]) -> None:
    delivery = run["delivery"]
    counts = delivery["deliveries"]
    quiet = run["others_before_post"]
    print(
        f"\nrun {number}: others' CPU before the POST {quiet['cores']} cores (waited "
        f"{quiet['waited_s']} s); load average before {_load(run['load_average_before'])}, "
        f"after {_load(run['load_average_after'])}\n"
        f"notification: 201 in {delivery['post_201_ms']} ms; completed "
        f"{delivery['seconds']:.2f} s after the POST (previous poll "
        f"{delivery['resolution_s'] * 1000:.0f} ms before) -> "
        f"{delivery['deliveries_per_second']:,.0f} deliveries/s\n"
        f"deliveries: {', '.join(f'{k} {v:,}' for k, v in counts.items())}; "
        f"not sent: {delivery['lost']}"
    )
    if "sink" in run:
        sink = run["sink"]
        print(
            f"sink count: before {sink['before']:,}, after {sink['after']:,}, "
            f"received {sink['received']:,} (duplicates {sink['duplicates']}, lost {sink['lost']})"
        )
    if "verify" in run:
        verify = run["verify"]
        print(
            f"deliveries listed: {verify['rows']:,}, statuses {verify['statuses']}, attempts "
            f"{verify['attempts']}, distinct addresses {verify['distinct_addresses']:,}, "
            f"distinct provider ids {verify['distinct_provider_ids']:,}"
        )
    cpu = run["cpu"]
    print(f"CPU over the {cpu['wall_s']} s from POST to completed (/proc/<pid>/stat):")
    print_parties(cpu)
    print(
        "  per CPU busy: "
        + ", ".join(f"{name} {share:.0%}" for name, share in cpu["per_cpu_busy"].items())
    )
    print_profiles(run.get("profile", {}), ("threads", "self", "inclusive"))
    sys.stdout.flush()


def print_report(report: dict[str, Any]) -> None:
    count = report["bindings"]["count"]
    rates = [run["delivery"]["deliveries_per_second"] for run in report["runs"]]
    print(
        f"\n{report['setup']}\n"
        f"bindings: {count:,} created in {report['bindings']['seconds']} s "
        f"({report['bindings']['per_second']:,.0f}/s)\n"
        f"deliveries/s per run: {', '.join(f'{r:,.0f}' for r in rates)} "
        f"(best {max(rates):,.0f}, median {statistics.median(rates):,.0f}); not sent: "
        f"{sum(run['delivery']['lost'] for run in report['runs'])}"
        + (
            f"; sink lost {sum(run['sink']['lost'] for run in report['runs'])}, duplicates "
            f"{sum(run['sink']['duplicates'] for run in report['runs'])}"
            if "sink" in report["runs"][0]
            else ""
        )
    )
    rss = report["rss_kb"]
    for name, hwm in rss["hwm"].items():
        peaks = ", ".join(
            f"{phase} {peaks[name] / 1024:.0f} MB"
            for phase, peaks in rss["peaks"].items()
            if name in peaks
        )
        print(
            f"RSS clarion {name}: sampled peaks {peaks}; VmHWM {(hwm or 0) / 1024:.0f} MB "
            f"({'under' if (hwm or 0) < 200 * 1024 else 'OVER'} 200 MB)"
        )
    if "latency" in report:
        latency = report["latency"]
        for key, label in (
            ("first_request", "201 -> first request at the APNs emulator"),
            ("sent_visible", "201 -> delivery `sent` in the Deliveries API"),
        ):
            q = latency[key]
            print(
                f"latency ({latency['runs']} runs) {label}: min {q['min_ms']} ms, "
                f"median {q['median_ms']} ms, p90 {q['p90_ms']} ms, max {q['max_ms']} ms"
            )
        seen = latency["sent_visible_last_seen_median_ms"]
        print(
            "  before `sent`, median last seen: "
            + (", ".join(f"{state} at {ms} ms" for state, ms in seen.items()) or "-")
        )


def _load(values: tuple[float, float, float]) -> str:
    return " ".join(f"{v:.2f}" for v in values)


# --- main ------------------------------------------------------------------------------------


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument(
        "--provider",
        choices=("sandbox", "sink"),
        default="sandbox",
        help="sandbox: `clarion serve --sandbox`, no credential; sink: nginx via ProviderUrl",
    )
    parser.add_argument(
        "--workers", type=int, help="`clarion worker` processes (postgresql only; default 1)"
    )
    parser.add_argument("--count", type=int, default=100_000, help="bindings in the tag")
    parser.add_argument(
        "--repeat", type=int, default=1, help="notifications to the tag, one after the other"
    )
    parser.add_argument(
        "--concurrency", type=int, default=50, help="binding creates in flight at once"
    )
    parser.add_argument(
        "--clarion-cpus",
        help="taskset CPU list for the Clarion processes (default: 0 on sqlite, none on "
        "postgresql, where the database shares the cores)",
    )
    parser.add_argument("--sink-cpu", default="1", help="SINK_CPU for nginx (default 1)")
    parser.add_argument("--bench-cpu", default="1", help="CPU for this script (default 1)")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="pin nothing")
    parser.add_argument("--sink-script", type=Path, default=SINK_SCRIPT)
    parser.add_argument(
        "--settle", type=float, default=2.0, help="seconds of rest between bindings and POST"
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to completion")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=120.0,
        help="seconds to wait at most for the rest of the machine to be quiet before the POST",
    )
    parser.add_argument(
        "--quiet-cores", type=float, default=0.25, help="what counts as quiet (cores used)"
    )
    parser.add_argument("--no-verify", dest="verify", action="store_false")
    parser.add_argument("--latency-runs", type=int, default=20, help="0 skips the latency part")
    parser.add_argument("--latency-gap", type=float, default=0.5, help="idle seconds before each")
    parser.add_argument("--profile", action="store_true", help="py-spy the Clarion processes")
    parser.add_argument("--profile-rate", type=int, default=100, help="py-spy samples/s")
    parser.add_argument("--name", help="results file name (default: delivery-<engine>-…)")
    args = parser.parse_args(argv)
    if args.engine == "sqlite" and args.workers is not None:
        parser.error("--workers needs --engine postgresql (`clarion serve` embeds the workers)")
    if args.engine == "postgresql":
        if args.provider == "sandbox":
            parser.error("`clarion worker` has no sandbox: use --provider sink with postgresql")
        args.workers = args.workers or 1
    if not args.pin or (os.cpu_count() or 1) < 2:
        args.clarion_cpus = args.sink_cpu = args.bench_cpu = None
    elif args.clarion_cpus is None:
        args.clarion_cpus = "0" if args.engine == "sqlite" else None
    return args


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    if args.bench_cpu:
        os.sched_setaffinity(0, {int(args.bench_cpu)})
    root = Path(tempfile.mkdtemp(prefix="clarion-delivery-bench-"))
    key = ec.generate_private_key(ec.SECP256R1())
    signing_key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    emulator = ApnsEmulator(environment="production")
    try:
        with contextlib.ExitStack() as stack:
            sink = (
                stack.enter_context(
                    provider_sink(args.sink_script, root / "sink", cpu=args.sink_cpu)
                )
                if args.provider == "sink"
                else None
            )
            # Clarion's TLS clients use ssl.create_default_context(), which reads SSL_CERT_FILE:
            # trust the sink's self-signed certificate and the emulator's CA, nothing else.
            trust = root / "trust.pem"
            trust.write_bytes(
                (sink.cert.read_bytes() if sink else b"") + emulator.ca.cert_pem.bytes()
            )
            database_url = None
            if args.engine == "postgresql":
                database_url = stack.enter_context(postgres_database())
            env = server_env(root / "data", database_url)
            env["SSL_CERT_FILE"] = str(trust)
            (port,) = free_ports(1)
            listen = ["--host", "127.0.0.1", "--port", str(port)]
            roles: list[Role] = []
            if args.engine == "sqlite":
                serve = ["serve", *listen, *(["--sandbox"] if args.provider == "sandbox" else [])]
                role = stack.enter_context(
                    clarion("serve", serve, env, port=port, cpus=args.clarion_cpus)
                )
                roles.append(role)
                auth = role.server.credentials()
            else:
                auth = create_account(env)
                for number in range(1, args.workers + 1):
                    worker = stack.enter_context(
                        clarion(f"worker-{number}", ["worker"], env, port=0, cpus=args.clarion_cpus)
                    )
                    worker.server.wait_for_line("Clarion workers are running", START_TIMEOUT)
                    roles.append(worker)
                role = stack.enter_context(
                    clarion(
                        "api",
                        ["serve", "--no-workers", *listen],
                        env,
                        port=port,
                        cpus=args.clarion_cpus,
                    )
                )
                role.server.wait_for_line("Clarion is serving")
                roles.insert(0, role)
            setup_line = (
                f"delivery bench: {args.engine}, provider {args.provider}"
                + (f" ({sink.url})" if sink else " (in-process emulator)")
                + f", {' + '.join(r.name for r in roles)}; clarion CPUs "
                f"{args.clarion_cpus or 'any'}, sink CPU {args.sink_cpu or 'any'}, this script "
                f"CPU {args.bench_cpu or 'any'}; {os.cpu_count()} CPUs"
            )
            print(setup_line, flush=True)
            sampler = RssSampler(roles)
            sampler.start()
            try:
                report = asyncio.run(
                    run(
                        Setup(
                            args=args,
                            roles=roles,
                            api_url=role.server.base_url,
                            auth=auth,
                            sink=sink,
                            database=database_url.rsplit("/", 1)[1] if database_url else None,
                            emulator=emulator,
                            signing_key_pem=signing_key_pem,
                        ),
                        sampler,
                    )
                )
            finally:
                sampler.stop()
            report["stderr_lines"] = {r.name: len(r.stderr) for r in roles}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report = {
        "setup": setup_line,
        "engine": args.engine,
        "provider": args.provider,
        "workers": args.workers,
        "pinning": {"clarion": args.clarion_cpus, "sink": args.sink_cpu, "bench": args.bench_cpu},
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **report,
    }
    print_report(report)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{_name(args)}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
