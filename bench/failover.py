"""Failover from push to SMS at scale, end to end, on a real `clarion serve --sandbox` (issue 4).

N identities (default 50,000) each have an APNs and an SMS binding with the tag
`failover-bench`, and the service's failover policy is push, then SMS. 30 % of the APNs tokens
start with `dead`, which the sandbox's APNs emulator answers 410 Unregistered. One notification to
the tag is timed from just before its POST until every identity's chain has settled: APNs `sent`
for the live tokens, and for the dead ones an SMS the provider took. The Deliveries API then shows
whether exactly the dead-token identities got exactly one SMS each, and nobody else got one.

Afterwards, with the server stopped, the query the leader's timer poll runs
(clarion.store.failover.fire_due) is captured and explained with every chain of the run pending
as a timer (50,000), to show that a poll is one indexed query however many timers wait.

Everything runs on 127.0.0.1 in a temporary directory (and a fresh PostgreSQL database with
`--engine postgresql`) removed at the end; results are printed and written to bench/results/.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from api_writes import RESULTS, create_account, postgres_database, server_env
from sqlalchemy import Connection, event, func, select, update

from clarion import config
from clarion.store import failover
from clarion.store.database import Database
from clarion.store.tables import failover_chain, notification
from delivery import (
    OPEN_STATES,
    Api,
    Profiler,
    Role,
    _load,
    _quantiles,
    clarion,
    cpu_snapshot,
    cpu_split,
    create_bindings,
    deliveries_of,
    free_ports,
    print_parties,
    print_profiles,
    wait_for_quiet,
)

TAG = "failover-bench"
POLICY = {"channels": ["push", "sms"], "wait": 120}
# Beyond the last page: a `PB` page token for it lists the newest deliveries.
NEWEST = f"PB{10**18 - 1}"


# --- the identities --------------------------------------------------------------------------


def is_dead(number: int, share: float) -> bool:
    """Whether identity `number` has a dead APNs token: spread evenly, floor(N * share) of N."""
    return int((number + 1) * share) > int(number * share)


def identity(number: int) -> str:
    return f"user-{number:07d}"


def binding_fields(number: int, binding_type: str, share: float) -> list[tuple[str, str]]:
    """One of identity `number`'s two bindings. APNs: 64 hex digits, starting `dead` (the
    sandbox answers 410 Unregistered) or `0` (never a scripted sandbox token). SMS: a possible
    US number, +1 415 200-0000 on, never one of Twilio's magic +1 500 555 test numbers."""
    if binding_type == "apn":
        address = f"dead{number:060x}" if is_dead(number, share) else f"{number:064x}"
    else:
        address = f"+1415{2_000_000 + number:07d}"
    return [
        ("Identity", identity(number)),
        ("BindingType", binding_type),
        ("Address", address),
        ("Tag", TAG),
    ]


# --- waiting for every chain to settle --------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    live: int
    dead: int

    @property
    def count(self) -> int:
        return self.live + self.dead


def _open(counts: dict[str, int]) -> int:
    return sum(counts.get(state, 0) for state in OPEN_STATES)


def _progress(body: dict[str, Any]) -> dict[str, Any]:
    by_channel = body["deliveries_by_channel"]
    apn, sms = by_channel.get("apn", {}), by_channel.get("sms", {})
    return {
        "apn_total": sum(apn.values()),
        "apn_open": _open(apn),
        "sms_total": sum(sms.values()),
        "sms_open": _open(sms),
        "sms_taken": sms.get("sent", 0) + sms.get("delivered", 0),
    }


@dataclass
class Settled:
    seconds: float  # POST sent → the poll that saw every chain settled answered
    resolution: float  # how long before that the previous poll found work left
    apn_final: float  # POST sent → the poll that saw every APNs delivery final answered
    apn_final_resolution: float
    notification: dict[str, Any]
    trace: list[dict[str, Any]]


class Watch:
    """Polls that cost the measured server little; each asked and answered time is kept.

    Fetching the notification counts its deliveries per channel and status (an index scan over
    all of them, ≈ 1 µs each), so it is polled at doubling intervals while the bulk is sent and
    then only to confirm what point lookups suggest: the last APNs delivery created (among the
    last APNs claimed) and the newest delivery (the last SMS a failure created).
    """

    def __init__(self, api: Api, path: str, *, posted: float, give_up: float) -> None:
        self.api = api
        self.path = path
        self.posted = posted
        self.give_up = give_up
        self.trace: list[dict[str, Any]] = []
        self.previous = posted  # when a poll last found the awaited thing not done

    def elapsed(self) -> float:
        elapsed = time.perf_counter() - self.posted
        if elapsed > self.give_up:
            raise RuntimeError(f"not settled within {self.give_up:.0f} s: {self.trace[-3:]}")
        return elapsed

    async def notification(self) -> tuple[float, dict[str, Any], dict[str, Any]]:
        asked = time.perf_counter()
        body = await self.api.expect(200, "GET", self.path)
        answered = time.perf_counter()
        progress = _progress(body)
        self.trace.append(
            {
                "t": round(answered - self.posted, 3),
                "poll_ms": round((answered - asked) * 1000, 1),
                "status": body["status"],
                **progress,
            }
        )
        return asked, body, progress

    async def newest(self, *channel: str) -> tuple[float, str]:
        """The status of the notification's newest delivery (of `channel`), and when asked."""
        asked = time.perf_counter()
        query = "".join(f"&Channel={c}" for c in channel)
        page = await self.api.expect(
            200, "GET", f"{self.path}/Deliveries?PageSize=1&PageToken={NEWEST}{query}"
        )
        return asked, page["deliveries"][0]["status"] if page["deliveries"] else "none"


async def wait_until_settled(
    api: Api, path: str, expected: Expected, *, posted: float, give_up: float
) -> Settled:
    """Poll until every chain has settled: each APNs delivery final, each SMS taken."""
    watch = Watch(api, path, posted=posted, give_up=give_up)
    # 1. The fan-out: the notification at doubling intervals until every APNs delivery exists.
    wait = 0.02
    while True:
        asked, body, progress = await watch.notification()
        if progress["apn_total"] >= expected.count:
            break
        watch.elapsed()
        await asyncio.sleep(wait)
        wait = min(wait * 2, 1.0)
    # 2. The last APNs delivery created, every 20 ms, until it is final.
    while progress["apn_open"]:
        asked, status = await watch.newest("apn")
        if status not in OPEN_STATES:
            asked, body, progress = await watch.notification()
        if progress["apn_open"]:
            watch.previous = asked
            watch.elapsed()
            await asyncio.sleep(0.02)
    apn_final = watch.trace[-1]["t"]
    apn_resolution = apn_final - (watch.previous - posted)
    # 3. Every SMS the failures created exists now: the newest delivery every 20 ms until it is
    # final, then the counts to confirm.
    while not (progress["sms_open"] == 0 and progress["sms_total"] >= expected.dead):
        asked, status = await watch.newest()
        if status not in OPEN_STATES:
            asked, body, progress = await watch.notification()
        if progress["sms_open"] or progress["sms_total"] < expected.dead:
            watch.previous = asked
            watch.elapsed()
            await asyncio.sleep(0.02)
    seconds = watch.trace[-1]["t"]
    return Settled(
        seconds=seconds,
        resolution=seconds - (watch.previous - posted),
        apn_final=apn_final,
        apn_final_resolution=apn_resolution,
        notification=body,
        trace=watch.trace,
    )


# --- latency: a dead token's SMS on an idle server ------------------------------------------


async def dead_token_latency(
    api: Api, service: str, *, runs: int, gap: float
) -> tuple[list[float], dict[str, list[float]]]:
    """Per run, one identity with a dead APNs token and an SMS number, and a notification to it
    after `gap` s of idle: the time from the 201 to the Deliveries API showing the SMS taken by
    the provider, polled every 5 ms, and when each earlier state was last seen. The chain moves
    on in the transaction that stores the APNs failure; what follows until the SMS is claimed is
    the delivery loop noticing it."""
    results: list[float] = []
    last_seen: dict[str, list[float]] = collections.defaultdict(list)
    for run in range(runs):
        name = f"latency-{run}"
        for binding_type, address in (
            ("apn", f"deadbeef{run:056x}"),
            ("sms", f"+1415{9_000_000 + run:07d}"),
        ):
            await api.expect(
                201,
                "POST",
                f"/v1/Services/{service}/Bindings",
                [("Identity", name), ("BindingType", binding_type), ("Address", address)],
            )
        await asyncio.sleep(gap)
        body = await api.expect(
            201,
            "POST",
            f"/v1/Services/{service}/Notifications",
            [("Identity", name), ("Body", "latency")],
        )
        created = time.perf_counter()
        # The notification's two newest deliveries: the table's last rows, a short index walk.
        path = (
            f"/v1/Services/{service}/Notifications/{body['sid']}/Deliveries"
            f"?PageSize=2&PageToken={NEWEST}"
        )
        seen: dict[str, float] = {}
        while True:
            rows = {
                row["channel"]: row for row in (await api.expect(200, "GET", path))["deliveries"]
            }
            sms = rows.get("sms")
            if sms is not None and sms["status"] not in OPEN_STATES:
                break
            if sms is not None:
                state = "sms " + sms["status"]
            elif "apn" in rows:
                state = "apn " + rows["apn"]["status"]
            else:
                state = "none"
            seen[state] = time.perf_counter() - created
            if time.perf_counter() - created > 10:
                raise RuntimeError(f"latency notification {body['sid']}: no SMS within 10 s")
            await asyncio.sleep(0.005)
        results.append(time.perf_counter() - created)
        if sms["status"] not in ("sent", "delivered") or sms["failover_reason"] != "dead_token":
            raise RuntimeError(f"latency SMS ended {sms}")
        for state, at in seen.items():
            last_seen[state].append(at)
    return results, last_seen


# --- checks ----------------------------------------------------------------------------------


async def verify(api: Api, path: str, share: float, count: int) -> dict[str, Any]:
    """Walk every delivery: one APNs delivery per identity (sent if live, failed Unregistered if
    dead); one SMS for each dead-token identity, a `dead_token` failover of its APNs delivery,
    taken by the provider; no SMS for anyone else."""
    apn: dict[str, dict[str, Any]] = {}
    sms: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    problems: collections.Counter[str] = collections.Counter()
    examples: dict[str, str] = {}
    statuses: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    rows = 0
    async for item in deliveries_of(api, path):
        rows += 1
        statuses[item["channel"]][item["status"]] += 1
        if item["channel"] == "apn":
            if item["identity"] in apn:
                problems["a second APNs delivery"] += 1
            apn[item["identity"]] = item
        elif item["channel"] == "sms":
            sms[item["identity"]].append(item)
        else:
            problems[f"a delivery on {item['channel']}"] += 1

    def problem(kind: str, item: Any) -> None:
        problems[kind] += 1
        examples.setdefault(kind, json.dumps(item)[:300])

    dead = {identity(n) for n in range(count) if is_dead(n, share)}
    for number in range(count):
        name = identity(number)
        push = apn.get(name)
        if push is None:
            problem("no APNs delivery", name)
        elif name in dead and (push["status"], push["error_code"]) != ("failed", "Unregistered"):
            problem("dead token not failed Unregistered", push)
        elif name not in dead and push["status"] != "sent":
            problem("live token not sent", push)
        texts = sms.get(name, [])
        if name not in dead:
            if texts:
                problem("SMS for a live-token identity", texts[0])
            continue
        if len(texts) != 1:
            problem(f"{len(texts)} SMS for a dead-token identity", texts or name)
            continue
        text = texts[0]
        if text["status"] not in ("sent", "delivered"):
            problem("SMS not taken", text)
        if (text["failover_step"], text["failover_reason"]) != (1, failover.DEAD_TOKEN):
            problem("SMS not a dead_token failover to step 1", text)
        if push is not None and text["failover_of"] != push["sid"]:
            problem("SMS not a failover of the identity's APNs delivery", text)
    with_sms = set(sms)
    return {
        "rows": rows,
        "statuses": {channel: dict(counter) for channel, counter in statuses.items()},
        "identities": count,
        "dead_token_identities": len(dead),
        "identities_with_sms": len(with_sms),
        "dead_with_exactly_one_sms": sum(1 for name in dead if len(sms.get(name, [])) == 1),
        "live_with_sms": len(with_sms - dead),
        "problems": dict(problems),
        "examples": examples,
    }


async def inactive_bindings(api: Api, service: str) -> int:
    """How many bindings of the tag the service shows `inactive` (every dead token should be)."""
    total = 0
    url: str | None = f"/v1/Services/{service}/Bindings?Status=inactive&Tag={TAG}&PageSize=1000"
    while url:
        body = await api.expect(200, "GET", url)
        total += len(body["bindings"])
        url = body["meta"]["next_page_url"]
    return total


# --- the timer poll's plan -------------------------------------------------------------------


def _timer_poll(conn: Connection, *, notification_sid: str, repeat: int) -> dict[str, Any]:
    """Inside a savepoint that is rolled back: every chain of the run pending again (a timer
    each), then the statement fire_due runs for a poll with nothing due yet, captured as the
    engine receives it, explained and timed; then the same after ANALYZE of the table, since a
    plan can depend on statistics (PostgreSQL has none until autovacuum or ANALYZE runs)."""
    savepoint = conn.begin_nested()
    try:
        notification_id = conn.scalar(
            select(notification.c.id).where(notification.c.sid == notification_sid)
        )
        of_run = failover_chain.c.notification_id == notification_id
        deadline = conn.scalar(select(func.max(failover_chain.c.deadline)).where(of_run))
        conn.execute(
            update(failover_chain)
            .where(of_run, failover_chain.c.deadline.is_(None))
            .values(status="waiting", deadline=deadline)
        )
        pending = conn.scalar(select(func.count()).where(failover_chain.c.deadline.is_not(None)))
        earliest = conn.scalar(select(func.min(failover_chain.c.deadline)))
        captured: list[tuple[str, Any]] = []

        def capture(*args: Any) -> None:
            captured.append((args[2], args[3]))  # statement, parameters

        event.listen(conn, "before_cursor_execute", capture)
        try:
            due = failover.fire_due(conn, now=earliest - timedelta(seconds=1))
        finally:
            event.remove(conn, "before_cursor_execute", capture)
        statement, parameters = captured[0]
        explain = "EXPLAIN QUERY PLAN " if conn.dialect.name == "sqlite" else "EXPLAIN "

        def measured() -> dict[str, Any]:
            rows = conn.exec_driver_sql(explain + statement, parameters).all()
            times = []
            for _ in range(repeat):
                started = time.perf_counter()
                conn.exec_driver_sql(statement, parameters).all()
                times.append(time.perf_counter() - started)
            return {
                # SQLite: (id, parent, notused, detail); PostgreSQL: one text column per line.
                "plan": [str(row[-1]) for row in rows],
                "poll_ms": {
                    "first": round(times[0] * 1000, 3),
                    "median": round(statistics.median(times) * 1000, 3),
                    "max": round(max(times) * 1000, 3),
                    "runs": repeat,
                },
            }

        as_found = measured()
        conn.exec_driver_sql("ANALYZE failover_chain")
        analyzed = measured()
    finally:
        savepoint.rollback()
    return {
        "pending_timers": pending,
        "due": due,
        "statements": len(captured),
        "statement": " ".join(statement.split()),
        "as_found": as_found,
        "analyzed": analyzed,
    }


async def timer_poll_plan(database_url: str, notification_sid: str) -> dict[str, Any]:
    database = Database(database_url)
    try:
        return await database.transaction(
            functools.partial(_timer_poll, notification_sid=notification_sid, repeat=20)
        )
    finally:
        await database.close()


# --- the run ---------------------------------------------------------------------------------


async def run(
    args: argparse.Namespace, role: Role, auth: tuple[str, str], database: str | None
) -> dict[str, Any]:
    expected = Expected(
        live=sum(1 for n in range(args.count) if not is_dead(n, args.dead_share)),
        dead=sum(1 for n in range(args.count) if is_dead(n, args.dead_share)),
    )
    report: dict[str, Any] = {"expected": {"live": expected.live, "dead": expected.dead}}
    policy = {**POLICY, "wait": args.wait}
    async with Api(role.server.base_url, auth, args.concurrency) as api:
        service = (
            await api.expect(
                201,
                "POST",
                "/v1/Services",
                [("FriendlyName", "failover bench"), ("Failover", json.dumps(policy))],
            )
        )["sid"]
        print(
            f"creating {2 * args.count:,} bindings for {args.count:,} identities "
            f"({expected.dead:,} dead APNs tokens; {args.concurrency} at a time)",
            flush=True,
        )
        # Both bindings of each identity, one after the other: binding 2n + k is identity n's
        # APNs (k = 0) or SMS (k = 1) binding.
        seconds = await create_bindings(
            api,
            service,
            2 * args.count,
            args.concurrency,
            fields=lambda n: binding_fields(n // 2, ("apn", "sms")[n % 2], args.dead_share),
        )
        report["bindings"] = {
            "count": 2 * args.count,
            "seconds": round(seconds, 2),
            "per_second": round(2 * args.count / seconds, 1),
        }
        print(f"  created in {seconds:.1f} s ({2 * args.count / seconds:,.0f}/s)", flush=True)
        await asyncio.sleep(args.settle)
        if args.latency_runs:
            # Before the big notification: its chains' timers must not fire meanwhile.
            taken, last_seen = await dead_token_latency(
                api, service, runs=args.latency_runs, gap=args.latency_gap
            )
            report["latency"] = {
                "runs": args.latency_runs,
                "gap_s": args.latency_gap,
                "sms_taken": _quantiles(taken),
                "last_seen_median_ms": {
                    state: round(statistics.median(times) * 1000, 1)
                    for state, times in last_seen.items()
                },
            }

        report["others_before_post"] = await wait_for_quiet(
            [role], args.quiet_wait, args.quiet_cores
        )
        report["load_average_before"] = os.getloadavg()
        profiler = Profiler([role], f"{_name(args)}", args.profile_rate) if args.profile else None
        if profiler is not None:
            profiler.start()
            await asyncio.sleep(1.0)  # py-spy attaches before the clock starts
        before = cpu_snapshot([role], None, database)
        posted = time.perf_counter()
        created = await api.expect(
            201,
            "POST",
            f"/v1/Services/{service}/Notifications",
            [("Tag", TAG), ("Title", "Clarion failover bench"), ("Body", "Hello, push or SMS")],
        )
        answered = time.perf_counter() - posted
        path = f"/v1/Services/{service}/Notifications/{created['sid']}"
        settled = await wait_until_settled(api, path, expected, posted=posted, give_up=args.timeout)
        after = cpu_snapshot([role], None, database)
        report["load_average_after"] = os.getloadavg()
        if profiler is not None:
            report["profile"] = profiler.stop()
        deliveries = expected.count + expected.dead
        report["notification"] = created["sid"]
        report["run"] = {
            "post_201_ms": round(answered * 1000, 1),
            "seconds": round(settled.seconds, 3),
            "resolution_s": round(settled.resolution, 3),
            "deliveries": deliveries,
            "deliveries_per_second": round(deliveries / settled.seconds, 1),
            "identities_per_second": round(expected.count / settled.seconds, 1),
            "apn_final_s": round(settled.apn_final, 3),
            "apn_final_resolution_s": round(settled.apn_final_resolution, 3),
            # What the SMS of the last dead tokens add after the last APNs result is stored.
            "sms_tail_s": round(settled.seconds - settled.apn_final, 3),
            "deliveries_by_channel": settled.notification["deliveries_by_channel"],
            "polls": len(settled.trace),
            "trace": settled.trace,
        }
        report["cpu"] = cpu_split(before, after, deliveries)
        print("checking every delivery through the Deliveries API", flush=True)
        report["verify"] = await verify(api, path, args.dead_share, args.count)
        report["verify"]["inactive_bindings"] = await inactive_bindings(api, service)
        report["failover_summary"] = (await api.expect(200, "GET", path))["failover"]
    return report


# --- output ----------------------------------------------------------------------------------


def _name(args: argparse.Namespace) -> str:
    return str(args.name or f"failover-{args.engine}")


def print_report(report: dict[str, Any]) -> None:
    run, verify, cpu = report["run"], report["verify"], report["cpu"]
    quiet = report["others_before_post"]
    print(
        f"\n{report['setup']}\n"
        f"bindings: {report['bindings']['count']:,} created in {report['bindings']['seconds']} s "
        f"({report['bindings']['per_second']:,.0f}/s)\n"
        f"others' CPU before the POST {quiet['cores']} cores (waited {quiet['waited_s']} s); "
        f"load average before {_load(report['load_average_before'])}, after "
        f"{_load(report['load_average_after'])}\n"
        f"notification to {verify['identities']:,} identities ({verify['dead_token_identities']:,}"
        f" dead APNs tokens): 201 in {run['post_201_ms']} ms; every chain settled "
        f"{run['seconds']:.2f} s after the POST (previous poll {run['resolution_s'] * 1000:.0f} ms "
        f"before) -> {run['deliveries_per_second']:,.0f} deliveries/s "
        f"({run['deliveries']:,} deliveries), {run['identities_per_second']:,.0f} identities/s\n"
        f"  every APNs delivery final at {run['apn_final_s']:.2f} s (previous poll "
        f"{run['apn_final_resolution_s'] * 1000:.0f} ms before); the last SMS taken "
        f"{run['sms_tail_s'] * 1000:.0f} ms after that\n"
        f"  deliveries by channel: {json.dumps(run['deliveries_by_channel'])}\n"
        f"checks: {verify['rows']:,} deliveries listed; identities with an SMS "
        f"{verify['identities_with_sms']:,}, of them dead-token identities with exactly one "
        f"{verify['dead_with_exactly_one_sms']:,} of {verify['dead_token_identities']:,}, "
        f"live-token identities with one {verify['live_with_sms']:,}; inactive bindings "
        f"{verify['inactive_bindings']:,}; problems: {verify['problems'] or 'none'}"
    )
    for kind, example in verify["examples"].items():
        print(f"  e.g. {kind}: {example}")
    print(f"failover summary: {json.dumps(report['failover_summary']['identities'])}")
    print(f"CPU over the {cpu['wall_s']} s from POST to settled (/proc/<pid>/stat):")
    print_parties(cpu)
    print_profiles(report.get("profile", {}), ("self", "inclusive"))
    if "latency" in report:
        latency = report["latency"]
        q = latency["sms_taken"]
        seen = latency["last_seen_median_ms"]
        print(
            f"latency ({latency['runs']} runs, {latency['gap_s']} s idle before each): 201 -> the "
            f"SMS of a dead-token identity taken: min {q['min_ms']} ms, median {q['median_ms']} "
            f"ms, p90 {q['p90_ms']} ms, max {q['max_ms']} ms\n  before that, median last seen: "
            + (", ".join(f"{state} at {ms} ms" for state, ms in seen.items()) or "-")
        )
    poll = report["timer_poll"]
    print(
        f"timer poll (clarion.store.failover.fire_due) with {poll['pending_timers']:,} pending "
        f"timers, none due: {poll['statements']} statement\n  {poll['statement']}"
    )
    for key, label in (("as_found", "statistics as found"), ("analyzed", "after ANALYZE")):
        ms = poll[key]["poll_ms"]
        print(
            f"  {label}: first {ms['first']} ms, median {ms['median']} ms, max {ms['max']} ms "
            f"({ms['runs']} runs); plan:"
        )
        for line in poll[key]["plan"]:
            print(f"    {line}")


# --- main ------------------------------------------------------------------------------------


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--count", type=int, default=50_000, help="identities in the tag")
    parser.add_argument(
        "--dead-share", type=float, default=0.3, help="share of APNs tokens that are dead"
    )
    parser.add_argument(
        "--wait", type=int, default=POLICY["wait"], help="the policy's wait, in seconds"
    )
    parser.add_argument(
        "--concurrency", type=int, default=50, help="binding creates in flight at once"
    )
    parser.add_argument(
        "--clarion-cpus",
        help="taskset CPU list for `clarion serve` (default: 0 on sqlite, none on postgresql, "
        "where the database shares the cores)",
    )
    parser.add_argument("--bench-cpu", default="1", help="CPU for this script (default 1)")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="pin nothing")
    parser.add_argument(
        "--settle", type=float, default=2.0, help="seconds of rest between bindings and POST"
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to settle")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=120.0,
        help="seconds to wait at most for the rest of the machine to be quiet before the POST",
    )
    parser.add_argument(
        "--quiet-cores", type=float, default=0.25, help="what counts as quiet (cores used)"
    )
    parser.add_argument("--latency-runs", type=int, default=20, help="0 skips the latency part")
    parser.add_argument("--latency-gap", type=float, default=1.0, help="idle seconds before each")
    parser.add_argument("--profile", action="store_true", help="py-spy the Clarion process")
    parser.add_argument("--profile-rate", type=int, default=100, help="py-spy samples/s")
    parser.add_argument("--name", help="results file name (default: failover-<engine>)")
    args = parser.parse_args(argv)
    if not 0 < args.dead_share < 1:
        parser.error("--dead-share must be between 0 and 1")
    if not args.pin or (os.cpu_count() or 1) < 2:
        args.clarion_cpus = args.bench_cpu = None
    elif args.clarion_cpus is None:
        args.clarion_cpus = "0" if args.engine == "sqlite" else None
    return args


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    # Stopped from outside (`timeout`, kill): unwind, so the server stops and the database and
    # directory are removed, as at a normal end.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped by SIGTERM"))
    if args.bench_cpu:
        os.sched_setaffinity(0, {int(args.bench_cpu)})
    root = Path(tempfile.mkdtemp(prefix="clarion-failover-bench-"))
    try:
        with contextlib.ExitStack() as stack:
            database_url = (
                stack.enter_context(postgres_database()) if args.engine == "postgresql" else None
            )
            env = server_env(root / "data", database_url)
            auth = create_account(env) if database_url else None
            (port,) = free_ports(1)
            serve = ["serve", "--sandbox", "--host", "127.0.0.1", "--port", str(port)]
            with clarion("serve", serve, env, port=port, cpus=args.clarion_cpus) as role:
                if auth is None:
                    auth = role.server.credentials()
                else:
                    role.server.wait_for_line("Clarion is serving")
                setup = (
                    f"failover bench: {args.engine}, `clarion serve --sandbox` on CPUs "
                    f"{args.clarion_cpus or 'any'}, this script on CPU {args.bench_cpu or 'any'}; "
                    f"{os.cpu_count()} CPUs; policy {json.dumps({**POLICY, 'wait': args.wait})}"
                )
                print(setup, flush=True)
                report = asyncio.run(
                    run(
                        args,
                        role,
                        auth,
                        database_url.rsplit("/", 1)[1] if database_url else None,
                    )
                )
                report["stderr_lines"] = len(role.stderr)
            # The server has stopped; its database is still there.
            report["timer_poll"] = asyncio.run(
                timer_poll_plan(config.load(env).database_url, report["notification"])
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report = {
        "setup": setup,
        "engine": args.engine,
        "count": args.count,
        "dead_share": args.dead_share,
        "pinning": {"clarion": args.clarion_cpus, "bench": args.bench_cpu},
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
