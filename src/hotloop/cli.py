"""The ``hotloop`` command: ``hotloop gateway …``, ``demo …``, ``bench …``, ``trace show …``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from hotloop.backends.sim import SimBackend
from hotloop.errors import HotloopError
from hotloop.gateway.app import GatewayServer
from hotloop.gateway.config import GatewayConfig
from hotloop.sim.latency import PROFILES, get_profile
from hotloop.sim.scenario import bundled_scenarios

__all__ = ["main"]


def _latency_overrides(pairs: Sequence[str]) -> dict[str, float]:
    overrides: dict[str, float] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise HotloopError(f"--latency takes key=value, got {pair!r}")
        try:
            overrides[key.strip()] = float(value)
        except ValueError:
            raise HotloopError(f"--latency {key}: {value!r} is not a number") from None
    return overrides


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hotloop", description="Fast tool-calling agent loops.")
    commands = parser.add_subparsers(dest="command", required=True)

    gateway = commands.add_parser(
        "gateway", help="serve the OpenAI Responses API (HTTP/SSE + WebSocket mode)"
    )
    gateway.add_argument("--backend", choices=["sim"], default="sim")
    gateway.add_argument(
        "--scenario",
        default="coding",
        help=f"bundled scenario ({', '.join(bundled_scenarios())}) or a path to a JSON file",
    )
    gateway.add_argument("--profile", choices=sorted(PROFILES), default="fast")
    gateway.add_argument(
        "--latency",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one latency parameter, e.g. --latency ttft_s=0.5",
    )
    gateway.add_argument("--host", default="127.0.0.1")
    gateway.add_argument("--port", type=int, default=8000)
    gateway.add_argument(
        "--api-key", action="append", default=[], help="accept only these bearer tokens"
    )
    gateway.add_argument(
        "--store",
        type=Path,
        default=None,
        help="SQLite file for store:true responses (default: in memory)",
    )
    gateway.add_argument("--max-message-mib", type=int, default=64)
    gateway.add_argument("--log-level", default="info")

    demo = commands.add_parser(
        "demo", help="play a scenario the naive way and with hotloop; compare; write a report"
    )
    demo.add_argument("--scenario", default="coding")
    demo.add_argument("--profile", choices=sorted(PROFILES), default="fast")
    demo.add_argument("--latency", action="append", default=[], metavar="KEY=VALUE")
    demo.add_argument(
        "--tool-time-scale",
        type=float,
        default=1.0,
        help="multiply the scenario's tool latencies (0 = instant tools)",
    )
    demo.add_argument(
        "--report",
        type=Path,
        default=Path("reports/demo.html"),
        metavar="PATH",
        help="where to write the HTML report (default: reports/demo.html)",
    )
    demo.add_argument(
        "--no-live", action="store_true", help="no live view or progress bar (plain output)"
    )

    bench = commands.add_parser(
        "bench", help="run the agent-loop strategies side by side, interleaved; report figures"
    )
    from hotloop.bench.command import add_arguments

    add_arguments(bench)

    trace = commands.add_parser("trace", help="look at saved traces (JSONL files of a Tracer)")
    trace_commands = trace.add_subparsers(dest="trace_command", required=True)
    show = trace_commands.add_parser("show", help="draw a waterfall of each run in a trace file")
    show.add_argument("file", type=Path, help="a JSONL trace file (hotloop.trace.JSONLSink)")
    show.add_argument("--width", type=int, default=None, help="columns (default: the terminal's)")
    return parser


async def _serve(args: argparse.Namespace) -> None:
    profile = get_profile(args.profile, _latency_overrides(args.latency))
    config = GatewayConfig(
        api_keys=frozenset(args.api_key) if args.api_key else None,
        store_path=args.store,
        max_message_bytes=args.max_message_mib * 1024 * 1024,
    )
    server = GatewayServer(
        SimBackend(args.scenario, profile),
        config,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
    )
    print(
        f"hotloop gateway: {server.base_url} (WebSocket {server.websocket_url}); "
        f"scenario {args.scenario!r}, profile {profile.name!r}; models: "
        f"{', '.join(server.gateway.models())}",
        flush=True,
    )
    await server.serve_forever()


def _show_trace(path: Path, width: int | None) -> None:
    from rich.console import Console

    from hotloop.trace import group_traces, read_spans, render_trace

    try:
        traces = group_traces(read_spans(path))
    except OSError as exc:
        raise HotloopError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if not traces:
        raise HotloopError(f"{path} holds no spans")
    console = Console(width=width) if width else Console()
    for spans in traces.values():
        console.print(render_trace(spans, console.width))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "gateway":
            asyncio.run(_serve(args))
        elif args.command == "demo":
            from hotloop.demo import run_demo

            profile = get_profile(args.profile, _latency_overrides(args.latency))
            outcome = asyncio.run(
                run_demo(
                    args.scenario,
                    profile,
                    tool_time_scale=args.tool_time_scale,
                    report_path=args.report,
                    live=not args.no_live,
                )
            )
            if not outcome.ok:
                return 1
        elif args.command == "bench":
            from hotloop.bench.command import run_command

            return run_command(args)
        elif args.command == "trace":
            _show_trace(args.file, args.width)
    except HotloopError as exc:
        print(f"hotloop: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
