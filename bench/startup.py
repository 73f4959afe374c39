"""Start-up time of `clarion serve`: from process start to the first answered API request.

Polls `GET /v1/Services` with Basic auth until it answers 200. "fresh" starts on an empty data
directory (SQLite) or an empty database (PostgreSQL), so it includes the migrations and, on
SQLite, creating the default account; "existing" restarts on the data left by a previous run.
Each is repeated (default 5 times); prints min/median/max and writes bench/results/<name>.json.
All traffic goes to 127.0.0.1; the servers, data directories and databases are cleaned up.

PostgreSQL has no default account, so a fresh start is timed to its first answered request of
any status (a 401 for the not yet existing account): see `first_response_s` in the results.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from api_writes import (
    RESULTS,
    START_TIMEOUT,
    Server,
    create_account,
    postgres_database,
    serve,
    server_env,
)

POLL_INTERVAL = 0.005


def _get(port: int, auth: tuple[str, str] | None) -> int | None:
    """The status of GET /v1/Services, or None while nothing answers."""
    headers = {}
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", "/v1/Services", headers=headers)
        return connection.getresponse().status
    except OSError:
        return None
    finally:
        connection.close()


def time_start(
    server: Server, auth: tuple[str, str] | None, *, want_200: bool = True
) -> dict[str, float | None]:
    """Seconds from process start to the first answer, and to the first 200 (if `want_200`).

    Without `auth`, the credentials are read from the server's own announcement (SQLite).
    """
    deadline = time.monotonic() + START_TIMEOUT
    first_response: float | None = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}")
        if auth is None and not server.lines.empty():
            with contextlib.suppress(RuntimeError):
                auth = server.credentials()
        status = _get(server.port, auth)
        now = time.perf_counter() - server.started_at
        if status is not None and first_response is None:
            first_response = now
        if status == 200:
            return {"first_response_s": first_response, "first_200_s": now}
        if status is not None and status != 401:
            raise RuntimeError(f"GET /v1/Services answered {status}")
        if status is not None and not want_200:
            return {"first_response_s": first_response, "first_200_s": None}
        time.sleep(POLL_INTERVAL)
    raise RuntimeError(f"server did not answer within {START_TIMEOUT:.0f} s")


def run_sqlite(repeat: int, cpu: int | None) -> dict[str, list[dict[str, float | None]]]:
    runs: dict[str, list[dict[str, float | None]]] = {"fresh": [], "existing": []}
    existing = Path(tempfile.mkdtemp(prefix="clarion-startup-"))
    try:
        for _ in range(repeat):
            data_dir = Path(tempfile.mkdtemp(prefix="clarion-startup-"))
            try:
                with serve(server_env(data_dir, None), cpu=cpu) as server:
                    runs["fresh"].append(time_start(server, None))
            finally:
                shutil.rmtree(data_dir, ignore_errors=True)
        env = server_env(existing, None)
        with serve(env, cpu=cpu) as server:  # prepares the data directory
            auth = server.credentials()
            time_start(server, auth)
        for _ in range(repeat):
            with serve(env, cpu=cpu) as server:
                runs["existing"].append(time_start(server, auth))
    finally:
        shutil.rmtree(existing, ignore_errors=True)
    return runs


def run_postgresql(repeat: int, cpu: int | None) -> dict[str, list[dict[str, float | None]]]:
    runs: dict[str, list[dict[str, float | None]]] = {"fresh": [], "existing": []}
    data_dir = Path(tempfile.mkdtemp(prefix="clarion-startup-"))
    try:
        unknown = ("AC" + "0" * 32, "0" * 32)
        for _ in range(repeat):
            with postgres_database() as url, serve(server_env(data_dir, url), cpu=cpu) as server:
                runs["fresh"].append(time_start(server, unknown, want_200=False))
        with postgres_database() as url:
            env = server_env(data_dir, url)
            auth = create_account(env)  # also migrates
            for _ in range(repeat):
                with serve(env, cpu=cpu) as server:
                    runs["existing"].append(time_start(server, auth))
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    return runs


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "min_s": round(min(values), 3),
        "median_s": round(statistics.median(values), 3),
        "max_s": round(max(values), 3),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--pin", action="store_true", help="run the server on CPU 0 only")
    parser.add_argument("--name", help="results file name (default: startup-<engine>)")
    args = parser.parse_args(argv)
    cpu = 0 if args.pin else None
    run = run_sqlite if args.engine == "sqlite" else run_postgresql
    runs = run(args.repeat, cpu)
    summary: dict[str, Any] = {}
    for kind, samples in runs.items():
        key = "first_200_s" if all(s["first_200_s"] is not None for s in samples) else None
        key = key or "first_response_s"
        values = [float(s[key] or 0.0) for s in samples]
        summary[kind] = {"measured": key, **_summary(values), "runs": samples}
        print(
            f"{args.engine} {kind:>8} start → {key.removesuffix('_s').replace('_', ' ')}: "
            f"min {min(values):.3f} s  median {statistics.median(values):.3f} s  "
            f"max {max(values):.3f} s  ({len(values)} runs)",
            flush=True,
        )
    report = {
        "engine": args.engine,
        "repeat": args.repeat,
        "pinned": args.pin,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "results": summary,
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{args.name or 'startup-' + args.engine}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
