"""Write throughput of a real `clarion serve`: binding and notification creates at concurrency 50.

Starts the server as a subprocess on 127.0.0.1 (SQLite in a temporary data directory, or a
freshly created PostgreSQL database with `--engine postgresql`), creates a service, then drives
POSTs from this process for a fixed duration (after a warm-up) or a fixed count and reports
requests/s, p50/p99 latency and errors, also as JSON under bench/results/. The server and the
load generator share the machine's cores; by default the server is pinned to CPU 0 and this
process to CPU 1. Everything is bounded in time and cleaned up: the server is terminated, the
data directory removed and the database dropped. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import os
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

CLARION = str(Path(sys.executable).parent / "clarion")
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _psql(sql: str) -> None:
    subprocess.run(
        ["psql", PG_ADMIN_URL, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql],
        check=True,
        capture_output=True,
        timeout=30,
    )


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A freshly created, empty PostgreSQL database; dropped on exit."""
    name = f"clarion_bench_{uuid.uuid4().hex[:12]}"
    _psql(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        _psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def server_env(data_dir: Path, database_url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLARION_")}
    env["CLARION_DATA_DIR"] = str(data_dir)
    env["CLARION_HOST"] = "127.0.0.1"
    # The benchmarks' providers (the nginx sink, the latency run's APNs emulator) listen on
    # 127.0.0.1, which Clarion refuses as a tenant's destination by default (clarion.destinations).
    env["CLARION_ALLOW_PRIVATE_DESTINATIONS"] = "true"
    if database_url is not None:
        env["CLARION_DATABASE_URL"] = database_url
    return env


def create_account(env: dict[str, str]) -> tuple[str, str]:
    """`clarion accounts create` (PostgreSQL has no default account); returns (SID, token)."""
    done = subprocess.run(
        [CLARION, "accounts", "create", "--friendly-name", "bench"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    issued = json.loads(done.stdout)
    return str(issued["sid"]), str(issued["auth_token"])


@dataclass
class Server:
    """A running `clarion serve`; `lines` receives its stdout as it is printed."""

    process: subprocess.Popen[str]
    port: int
    started_at: float
    lines: queue.Queue[str | None] = field(default_factory=queue.Queue)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_for_line(self, prefix: str, timeout: float = START_TIMEOUT) -> str:
        """The first stdout line starting with `prefix` (after stripping), or RuntimeError."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"server printed no {prefix!r} line within {timeout:.0f} s")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(f"server exited ({self.process.poll()}) before {prefix!r}")
            if line.strip().startswith(prefix):
                return line.strip().removeprefix(prefix).strip()

    def credentials(self) -> tuple[str, str]:
        """The default account the server prints on SQLite."""
        return self.wait_for_line("Account SID:"), self.wait_for_line("Auth token:")


def _pump(stream: object, lines: queue.Queue[str | None]) -> None:
    assert hasattr(stream, "readline")
    for line in iter(stream.readline, ""):
        lines.put(line)
    lines.put(None)


@contextlib.contextmanager
def serve(env: dict[str, str], *, cpu: int | None = None) -> Iterator[Server]:
    """`clarion serve` on a free port, optionally pinned to one CPU with taskset."""
    port = free_port()
    command = [CLARION, "serve", "--host", "127.0.0.1", "--port", str(port)]
    if cpu is not None and shutil.which("taskset"):
        command = ["taskset", "-c", str(cpu), *command]
    started_at = time.perf_counter()
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    server = Server(process=process, port=port, started_at=started_at)
    threading.Thread(target=_pump, args=(process.stdout, server.lines), daemon=True).start()
    stderr_lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_pump, args=(process.stderr, stderr_lines), daemon=True).start()
    try:
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        errors = []
        while not stderr_lines.empty():
            line = stderr_lines.get_nowait()
            if line:
                errors.append(line.rstrip())
        if errors:
            print("server stderr (last lines):", *errors[-10:], sep="\n  ", file=sys.stderr)


# --- load generation -----------------------------------------------------------------------

RESULTS = Path(__file__).parent / "results"


@dataclass
class Sample:
    started: float
    latency: float
    status: int


@dataclass
class Measurement:
    name: str
    samples: list[Sample]
    elapsed: float
    error_examples: list[str]

    def summary(self) -> dict[str, Any]:
        latencies = sorted(s.latency for s in self.samples)
        errors = sum(1 for s in self.samples if s.status != 201)
        return {
            "requests": len(self.samples),
            "seconds": round(self.elapsed, 3),
            "requests_per_second": round(len(self.samples) / self.elapsed, 1)
            if self.elapsed
            else 0.0,
            "p50_ms": round(_percentile(latencies, 0.50) * 1000, 2),
            "p99_ms": round(_percentile(latencies, 0.99) * 1000, 2),
            "max_ms": round((latencies[-1] if latencies else 0.0) * 1000, 2),
            "errors": errors,
            "error_examples": self.error_examples[:5],
        }


def _percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


class Client:
    """A minimal POST interface over aiohttp or httpx, whichever was asked for."""

    def __init__(self, kind: str, base_url: str, auth: tuple[str, str], concurrency: int) -> None:
        self.kind = kind
        self.base_url = base_url
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        self.headers = {
            "Authorization": f"Basic {token}",
            "Content-Type": "application/x-www-form-urlencoded",
        }
        self._session: Any = None
        self._concurrency = concurrency

    async def __aenter__(self) -> Client:
        if self.kind == "aiohttp":
            import aiohttp

            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._concurrency),
                timeout=aiohttp.ClientTimeout(total=30),
            )
        else:
            import httpx

            limits = httpx.Limits(
                max_connections=self._concurrency, max_keepalive_connections=self._concurrency
            )
            self._session = httpx.AsyncClient(limits=limits, timeout=30.0)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self._session.close() if self.kind == "aiohttp" else await self._session.aclose()

    async def post(self, path: str, fields: list[tuple[str, str]]) -> tuple[int, bytes]:
        body = urlencode(fields)
        if self.kind == "aiohttp":
            async with self._session.post(
                self.base_url + path, data=body, headers=self.headers
            ) as response:
                return int(response.status), await response.read()
        response = await self._session.post(
            self.base_url + path, content=body, headers=self.headers
        )
        return int(response.status_code), response.content


def binding_fields(n: int, run: str) -> list[tuple[str, str]]:
    """A binding of a distinct identity and address (an APNs token), with two tags."""
    return [
        ("Identity", f"bench-{run}-{n}"),
        ("BindingType", "apn"),
        ("Address", f"{run}{n:056x}"),
        ("Tag", "bench"),
        ("Tag", f"cohort-{n % 16}"),
    ]


def notification_fields(n: int, run: str) -> list[tuple[str, str]]:
    return [("Identity", f"bench-{run}-{n % 1000}"), ("Body", f"Hello number {n}")]


async def run_load(
    client: Client,
    *,
    name: str,
    path: str,
    make_fields: Any,
    concurrency: int,
    warmup: float,
    duration: float,
    count: int | None,
) -> Measurement:
    """`concurrency` workers POST back to back; warm-up requests are not recorded.

    With `count`, stops after that many recorded requests, else after `duration` seconds.
    """
    run = uuid.uuid4().hex[:8]
    counter = itertools.count()
    samples: list[Sample] = []
    error_examples: list[str] = []
    start = time.perf_counter()
    measure_from = start + warmup
    hard_stop = measure_from + (duration if count is None else max(duration, 600.0))
    recorded = itertools.count(1)

    async def worker() -> None:
        while True:
            now = time.perf_counter()
            if now >= hard_stop:
                return
            fields = make_fields(next(counter), run)
            try:
                status, body = await client.post(path, fields)
            except Exception as exc:
                status, body = 0, repr(exc).encode()
            done = time.perf_counter()
            if now >= measure_from:
                samples.append(Sample(now, done - now, status))
                if status != 201 and len(error_examples) < 5:
                    error_examples.append(f"{status}: {body[:200].decode(errors='replace')}")
                if count is not None and next(recorded) >= count:
                    return

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    first = min((s.started for s in samples), default=measure_from)
    last = max((s.started + s.latency for s in samples), default=measure_from)
    elapsed = (last - first) if count is not None else duration
    return Measurement(name=name, samples=samples, elapsed=elapsed, error_examples=error_examples)


async def bench(args: argparse.Namespace, server: Server, auth: tuple[str, str]) -> dict[str, Any]:
    async with Client(args.client, server.base_url, auth, args.concurrency) as client:
        status, body = await client.post("/v1/Services", [("FriendlyName", "bench")])
        if status != 201:
            raise RuntimeError(f"cannot create a service: {status} {body[:200]!r}")
        service_sid = json.loads(body)["sid"]
        results: dict[str, Any] = {}
        kinds = {
            "bindings": (f"/v1/Services/{service_sid}/Bindings", binding_fields),
            "notifications": (f"/v1/Services/{service_sid}/Notifications", notification_fields),
        }
        for kind in args.kinds:
            path, make_fields = kinds[kind]
            measurement = await run_load(
                client,
                name=kind,
                path=path,
                make_fields=make_fields,
                concurrency=args.concurrency,
                warmup=args.warmup,
                duration=args.duration,
                count=args.count,
            )
            results[kind] = measurement.summary()
            _print_line(kind, results[kind])
        return results


def _print_line(kind: str, summary: dict[str, Any]) -> None:
    print(
        f"{kind:>14}: {summary['requests_per_second']:8.1f} req/s  "
        f"p50 {summary['p50_ms']:6.1f} ms  p99 {summary['p99_ms']:6.1f} ms  "
        f"max {summary['max_ms']:6.1f} ms  errors {summary['errors']}  "
        f"({summary['requests']} requests in {summary['seconds']} s)",
        flush=True,
    )
    for example in summary["error_examples"]:
        print(f"{'':>16}{example}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per kind")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds not measured first")
    parser.add_argument("--count", type=int, help="measure this many requests instead")
    parser.add_argument(
        "--kinds",
        nargs="+",
        choices=("bindings", "notifications"),
        default=["bindings", "notifications"],
    )
    parser.add_argument("--client", choices=("aiohttp", "httpx"), default=_default_client())
    parser.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="do not pin the server to CPU 0 and the load generator to CPU 1",
    )
    parser.add_argument("--name", help="results file name (default: api_writes-<engine>)")
    args = parser.parse_args(argv)
    pin = args.pin and hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2
    if pin:
        os.sched_setaffinity(0, {1})
    data_dir = Path(tempfile.mkdtemp(prefix="clarion-bench-"))
    try:
        with contextlib.ExitStack() as stack:
            database_url = None
            if args.engine == "postgresql":
                database_url = stack.enter_context(postgres_database())
            env = server_env(data_dir, database_url)
            if args.engine == "postgresql":
                auth = create_account(env)
            server = stack.enter_context(serve(env, cpu=0 if pin else None))
            if args.engine == "sqlite":
                auth = server.credentials()
            else:
                server.wait_for_line("Clarion is serving")
            print(
                f"clarion serve on {args.engine}, {args.concurrency} concurrent {args.client} "
                f"requests, server {'on CPU 0, client on CPU 1' if pin else 'not pinned'}",
                flush=True,
            )
            results = asyncio.run(bench(args, server, auth))
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    report = {
        "engine": args.engine,
        "client": args.client,
        "concurrency": args.concurrency,
        "pinned": pin,
        "warmup_s": args.warmup,
        "duration_s": None if args.count else args.duration,
        "count": args.count,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "results": results,
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{args.name or 'api_writes-' + args.engine}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


def _default_client() -> str:
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        return "httpx"
    return "aiohttp"


if __name__ == "__main__":
    main()
