"""Web push and e-mail delivery throughput through a real Clarion (issue 6, "Numbers").

Per channel, N bindings (default 10,000) share one tag on `clarion serve --sandbox` (SQLite),
and one notification to the tag is timed from just before its POST to the first poll that sees
it `completed`: N / seconds deliveries/s. The Deliveries API then shows whether every delivery
was `sent` exactly once.

- `webpush`: subscriptions made here as a browser makes them (a fresh P-256 key and auth secret
  each, endpoints on an invented push service). The sandbox sends every subscription to its
  built-in push service, so each delivery is a real one: JSON payload with its receipt token,
  aes128gcm encryption with a fresh sender key, a VAPID-signed HTTPS POST; the push service
  checks the headers and the JWT (it does not hold these subscriptions' keys, so it does not
  decrypt).
- `email`: addresses at one domain, sent through the sandbox's SMTP relay (aiosmtpd with
  STARTTLS) over the channel's pooled connections; the relay parses and keeps each message.
- `smpp`: SMS bindings (+1555… numbers) of a service whose `smpp` credential is aimed at the
  sandbox's SMSC emulator (smpp34's server behind its authenticating relay): one transceiver
  bind, a window of 32 submit_sm. Timed to `completed` (every submit_sm answered) as the
  others; then, separately, until every delivery receipt has made its delivery `delivered`.

The emulators run inside the server process, so their CPU is counted as Clarion's. Everything
runs on 127.0.0.1 in a temporary directory removed at the end; results are printed and written
to bench/results/. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from api_writes import RESULTS, server_env
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from delivery import (
    Api,
    Role,
    clarion,
    cpu_snapshot,
    cpu_split,
    create_bindings,
    free_ports,
    verify_deliveries,
    wait_for_quiet,
    wait_until_completed,
)

CHANNELS = ("webpush", "email", "smpp")
# The binding type each measured channel registers.
BINDING_TYPES = {"webpush": "webpush", "email": "email", "smpp": "sms"}


def subscription(number: int) -> str:
    """Subscription `number` as a browser's `PushSubscription.toJSON()` gives it."""
    point = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    keys = {"p256dh": _b64url(point), "auth": _b64url(secrets.token_bytes(16))}
    endpoint = f"https://push.bench.invalid/sub/user-{number:07d}"
    return json.dumps({"endpoint": endpoint, "expirationTime": None, "keys": keys})


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def address_of(channel: str, number: int) -> str:
    """Never one of the sandbox's scripted `dead`/`bad`/`busy`/`slow` addresses."""
    if channel == "webpush":
        return subscription(number)
    if channel == "smpp":
        return f"+1555{number:07d}"  # never one of the SMSC emulator's +1500555000x
    return f"user-{number:07d}@bench.example.com"


def fields_for(channel: str) -> Callable[[int], list[tuple[str, str]]]:
    def fields(number: int) -> list[tuple[str, str]]:
        return [
            ("Identity", f"user-{number:07d}"),
            ("BindingType", BINDING_TYPES[channel]),
            ("Address", address_of(channel, number)),
            ("Tag", f"bench-{channel}"),
        ]

    return fields


async def measure(
    api: Api, args: argparse.Namespace, roles: list[Role], channel: str
) -> dict[str, Any]:
    """Bindings for `channel`, then one notification to them, timed and checked."""
    service_fields = [("FriendlyName", channel)]
    if channel == "smpp":
        service_fields.append(("SmsCredentialSid", await smpp_credential(api, role=roles[0])))
    service = (await api.expect(201, "POST", "/v1/Services", service_fields))["sid"]
    print(f"{channel}: creating {args.count:,} bindings", flush=True)
    created_in = await create_bindings(
        api, service, args.count, args.concurrency, fields=fields_for(channel)
    )
    result: dict[str, Any] = {
        "bindings": {"count": args.count, "seconds": round(created_in, 2)},
        "others_before_post": await wait_for_quiet(roles, args.quiet_wait, args.quiet_cores),
    }
    before = cpu_snapshot(roles, None, None)
    posted = time.perf_counter()
    notification = await api.expect(
        201,
        "POST",
        f"/v1/Services/{service}/Notifications",
        [("Tag", f"bench-{channel}"), ("Title", "Clarion bench"), ("Body", "Hello, " + channel)],
    )
    path = f"/v1/Services/{service}/Notifications/{notification['sid']}"
    completion = await wait_until_completed(
        api, path, expected=args.count, posted=posted, give_up=args.timeout, sink=None
    )
    after = cpu_snapshot(roles, None, None)
    counts = completion.notification["deliveries"]
    result["delivery"] = {
        "notification": notification["sid"],
        "seconds": round(completion.seconds, 3),
        "resolution_s": round(completion.resolution, 3),
        "deliveries_per_second": round(args.count / completion.seconds, 1),
        "deliveries": counts,
        "lost": args.count - counts.get("sent", 0) - counts.get("delivered", 0),
    }
    if channel == "smpp":
        result["receipts"] = await wait_for_receipts(api, path, args.count, posted, args.timeout)
    result["cpu"] = cpu_split(before, after, args.count)
    result["verify"] = await verify_deliveries(api, path)
    clarion_cpu = result["cpu"]["parties"]["clarion (total)"]
    print(
        f"{channel}: {args.count:,} deliveries in {completion.seconds:.2f} s = "
        f"{args.count / completion.seconds:,.0f}/s; statuses {result['verify']['statuses']}, "
        f"attempts {result['verify']['attempts']}; Clarion {clarion_cpu['cores']} cores, "
        f"{clarion_cpu['us_per_delivery']} µs CPU per delivery",
        flush=True,
    )
    return result


async def smpp_credential(api: Api, *, role: Role) -> str:
    """An smpp credential aimed at the SMSC emulator the sandbox announced."""
    where = await asyncio.to_thread(role.server.wait_for_line, "SMSC emulator (SMPP 3.4):")
    host, _, port = where.rpartition(":")
    fields = [
        ("Type", "smpp"),
        ("Host", host),
        ("Port", port),
        ("SystemId", "clarion"),
        ("Password", "sandbox"),
        ("SourceAddr", "+15005550006"),
    ]
    return str((await api.expect(201, "POST", "/v1/Credentials", fields))["sid"])


async def wait_for_receipts(
    api: Api, path: str, count: int, posted: float, give_up: float
) -> dict[str, Any]:
    """Poll the notification until every delivery is `delivered` (receipts applied)."""
    while True:
        body = await api.expect(200, "GET", path)
        counts = body["deliveries"]
        seconds = time.perf_counter() - posted
        if counts.get("delivered", 0) >= count or seconds > give_up:
            return {
                "seconds_after_post": round(seconds, 3),
                "delivered_per_second": round(counts.get("delivered", 0) / seconds, 1),
                "deliveries": counts,
            }
        await asyncio.sleep(0.2)


async def run(args: argparse.Namespace, role: Role) -> dict[str, Any]:
    auth = role.server.credentials()
    async with Api(role.server.base_url, auth, args.concurrency) as api:
        return {channel: await measure(api, args, [role], channel) for channel in args.channels}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000, help="bindings per channel")
    parser.add_argument(
        "--channels",
        type=lambda text: text.split(","),
        default=list(CHANNELS),
        help="webpush,email,smpp",
    )
    parser.add_argument("--concurrency", type=int, default=50, help="binding POSTs in flight")
    parser.add_argument("--clarion-cpus", default="0", help="taskset CPUs for Clarion (0)")
    parser.add_argument("--bench-cpu", default="1", help="CPU for this script (default 1)")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="pin nothing")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to completion")
    parser.add_argument("--quiet-wait", type=float, default=120.0)
    parser.add_argument("--quiet-cores", type=float, default=0.25)
    parser.add_argument("--name", default="channels", help="results file name")
    args = parser.parse_args(argv)
    unknown = set(args.channels) - set(CHANNELS)
    if unknown:
        parser.error(f"unknown channels: {', '.join(sorted(unknown))}")
    if not args.pin:
        args.clarion_cpus = args.bench_cpu = None
    return args


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    if args.bench_cpu:
        os.sched_setaffinity(0, {int(args.bench_cpu)})
    root = Path(tempfile.mkdtemp(prefix="clarion-channels-bench-"))
    try:
        (port,) = free_ports(1)
        serve = ["serve", "--sandbox", "--host", "127.0.0.1", "--port", str(port)]
        env = server_env(root / "data", None)
        with clarion("serve", serve, env, port=port, cpus=args.clarion_cpus) as role:
            print(
                f"channels bench: sqlite, clarion serve --sandbox on CPUs "
                f"{args.clarion_cpus or 'any'}, this script on {args.bench_cpu or 'any'}; "
                f"{os.cpu_count()} CPUs",
                flush=True,
            )
            report = asyncio.run(run(args, role))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    output = RESULTS / f"{args.name}.json"
    output.write_text(json.dumps({"args": vars(args), "channels": report}, indent=2) + "\n")
    print(f"written to {output}", file=sys.stderr)


if __name__ == "__main__":
    main()
