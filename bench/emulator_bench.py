"""How fast the emulator serves 100-event stream requests, and what each one costs it.

The emulator runs as its own process (``meterstream emulator``), as in the connector's
benchmark; one or more client processes send realistic batches (identifier, RFC 3339
timestamp, customer, value: what the connector sends) over keep-alive connections with
httpx, N requests in flight each. Reported: requests/s and events/s served, latency
percentiles, and the emulator's own CPU time per request, which says how much of a core
it needs at the connector's target (1,000 requests/s = 100,000 events/s) whatever the
client could push on this machine.

    .venv/bin/python -m bench.emulator_bench [--seconds 10] [--concurrency 32] [--clients 1]

Writes bench/results/emulator.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil

from meterstream_local.emulator import EmulatorClient, EmulatorProcess

STREAM_PATH = "/v2/billing/meter_event_stream"
RESULTS = Path(__file__).resolve().parent / "results" / "emulator.json"
#: Stripe's per-request maximum, and what the connector sends when it is busy.
EVENTS_PER_REQUEST = 100
#: The connector's throughput target, in requests of 100 events per second.
TARGET_REQUESTS_PER_SECOND = 1_000
#: Customers spread across events, so aggregates grow as they would in a real run.
CUSTOMERS = 1_000


def _template(run: str, client: int) -> bytes:
    """A request body with ``@@N@@`` where the request number goes (cheap to fill in)."""
    now = datetime.now(UTC)

    def stamp(i: int) -> str:  # distinct per event, as the connector's records are
        moment = now - timedelta(milliseconds=37 * i)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"

    events = [
        {
            "event_name": "api_requests",
            "identifier": f"{run}-{client}-@@N@@-{i}",
            "timestamp": stamp(i),
            "payload": {
                "stripe_customer_id": f"cus_{i * 7 % CUSTOMERS:06d}",
                "value": str(i % 9 + 1),
            },
        }
        for i in range(EVENTS_PER_REQUEST)
    ]
    return orjson.dumps({"events": events})


async def _drive(
    base_url: str,
    run: str,
    client: int,
    concurrency: int,
    warmup: float,
    seconds: float,
    kind: str,
) -> dict[str, Any]:
    template = _template(run, client)
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    counter = 0
    measured = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as http:
        response = await http.post(
            "/v2/billing/meter_event_session", headers={"Authorization": "Bearer sk_test_bench"}
        )
        token = response.json()["authentication_token"]
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        url = httpx.URL(base_url)
        start = time.perf_counter()
        measure_from = start + warmup
        stop_at = measure_from + seconds

        def next_body() -> bytes:
            nonlocal counter
            counter += 1
            return template.replace(b"@@N@@", str(counter).encode())

        def record(status: int, sent: float, done: float) -> None:
            nonlocal measured
            if sent >= measure_from and done <= stop_at:
                statuses[status] = statuses.get(status, 0) + 1
                latencies.append(done - sent)
                measured += 1

        async def httpx_worker() -> None:
            while time.perf_counter() < stop_at:
                body = next_body()
                sent = time.perf_counter()
                reply = await http.post(STREAM_PATH, content=body, headers=headers)
                record(reply.status_code, sent, time.perf_counter())

        async def raw_worker() -> None:
            # HTTP/1.1 keep-alive by hand: what a client costs when it costs almost nothing.
            reader, writer = await asyncio.open_connection(url.host, url.port)
            head = (
                f"POST {STREAM_PATH} HTTP/1.1\r\nHost: {url.host}:{url.port}\r\n"
                f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            ).encode()
            try:
                while time.perf_counter() < stop_at:
                    body = next_body()
                    sent = time.perf_counter()
                    writer.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
                    response_head = await reader.readuntil(b"\r\n\r\n")
                    status = int(response_head[9:12])
                    length = 0
                    for line in response_head.split(b"\r\n"):
                        if line[:15].lower() == b"content-length:":
                            length = int(line[15:])
                    await reader.readexactly(length)
                    record(status, sent, time.perf_counter())
            finally:
                writer.close()
                await writer.wait_closed()

        worker = raw_worker if kind == "raw" else httpx_worker
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"statuses": statuses, "latencies": latencies, "measured": measured}


def _client_process(args: tuple[str, str, int, int, float, float, str]) -> dict[str, Any]:
    base_url, run, client, concurrency, warmup, seconds, kind = args
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is installed with uvicorn[standard]
        pass
    return asyncio.run(_drive(base_url, run, client, concurrency, warmup, seconds, kind))


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(seconds: float, warmup: float, concurrency: int, clients: int, kind: str) -> dict[str, Any]:
    """One measurement against a fresh emulator subprocess."""
    run_id = uuid.uuid4().hex[:8]
    with EmulatorProcess(["--meter", "api_requests"]) as emulator:
        proc = psutil.Process(emulator.proc.pid if emulator.proc else os.getpid())
        with EmulatorClient(emulator.base_url) as control:
            jobs = [
                (emulator.base_url, run_id, i, concurrency, warmup, seconds, kind)
                for i in range(clients)
            ]
            with multiprocessing.get_context("spawn").Pool(clients) as pool:
                pending = pool.map_async(_client_process, jobs)
                time.sleep(warmup + 0.5)  # clients are up and sending by now
                cpu_before = sum(proc.cpu_times()[:2])
                wall_before = time.perf_counter()
                time.sleep(max(0.0, seconds - 1.0))
                cpu_after = sum(proc.cpu_times()[:2])
                wall_after = time.perf_counter()
                results = pending.get()
            stats = control.stats()
            rss = proc.memory_info().rss
    statuses: dict[str, int] = {}
    latencies: list[float] = []
    for result in results:
        for status, count in result["statuses"].items():
            statuses[str(status)] = statuses.get(str(status), 0) + count
        latencies.extend(result["latencies"])
    measured = sum(r["measured"] for r in results)
    rps = measured / seconds
    cpu_share = (cpu_after - cpu_before) / (wall_after - wall_before)
    cpu_per_request_ms = 1000 * cpu_share / rps if rps else float("nan")
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "setup": {
            "client": kind,
            "seconds": seconds,
            "warmup_seconds": warmup,
            "client_processes": clients,
            "concurrency_per_client": concurrency,
            "events_per_request": EVENTS_PER_REQUEST,
        },
        "requests_per_second": round(rps, 1),
        "events_per_second": round(rps * EVENTS_PER_REQUEST),
        "statuses": statuses,
        "latency_ms": {
            "p50": round(1000 * _percentile(latencies, 0.50), 2),
            "p95": round(1000 * _percentile(latencies, 0.95), 2),
            "p99": round(1000 * _percentile(latencies, 0.99), 2),
            "mean": round(1000 * statistics.fmean(latencies), 2) if latencies else None,
        },
        "emulator_cpu": {
            "cores_used": round(cpu_share, 3),
            "ms_per_request": round(cpu_per_request_ms, 3),
            "max_requests_per_second_per_core": round(1000 / cpu_per_request_ms)
            if cpu_per_request_ms
            else None,
            "core_share_at_target": round(
                TARGET_REQUESTS_PER_SECOND * cpu_per_request_ms / 1000, 3
            ),
        },
        "emulator_events_accepted": stats["events"]["accepted"],
        "emulator_rss_mb": round(rss / 2**20, 1),
        "emulator_duplicates": stats["events"]["duplicates"],
    }


def _report(result: dict[str, Any]) -> None:
    setup, cpu = result["setup"], result["emulator_cpu"]
    print(
        f"[{setup['client']}] {result['requests_per_second']:.0f} requests/s "
        f"({result['events_per_second']:,} events/s) with {setup['client_processes']} client "
        f"process(es) x {setup['concurrency_per_client']} in flight; latency p50 "
        f"{result['latency_ms']['p50']} ms, p99 {result['latency_ms']['p99']} ms; statuses "
        f"{result['statuses']}"
    )
    print(
        f"    emulator CPU {cpu['cores_used']:.2f} cores: {cpu['ms_per_request']} ms per "
        f"100-event request -> {cpu['max_requests_per_second_per_core']} requests/s per core; "
        f"{TARGET_REQUESTS_PER_SECOND} requests/s would take {cpu['core_share_at_target']:.0%} "
        "of a core"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the scenarios, print them, write bench/results/emulator.json."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured duration")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured start")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight per client")
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument(
        "--client",
        choices=("httpx", "raw", "both"),
        default="both",
        help="httpx (what the connector uses) and/or a minimal raw-socket client that shows "
        "the emulator's own ceiling",
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    kinds = ["httpx", "raw"] if args.client == "both" else [args.client]
    results = {}
    for kind in kinds:
        results[kind] = run(args.seconds, args.warmup, args.concurrency, args.clients, kind)
        _report(results[kind])
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
