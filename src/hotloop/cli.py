"""The ``hotloop`` command: ``gateway``, ``demo``, ``bench``, ``trace show`` and ``report``."""

from __future__ import annotations

import argparse
import asyncio
import errno
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from hotloop.backends.base import Backend
from hotloop.backends.hedging import HedgeSettings
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


def _model_profile(entry: str) -> tuple[str, str]:
    """``NAME=PROFILE``: a simulated model ``hotloop-sim@NAME`` with a named profile."""
    name, sep, profile = entry.partition("=")
    if not sep or not name or not profile:
        raise argparse.ArgumentTypeError(f"expected NAME=PROFILE, got {entry!r}")
    if profile not in PROFILES:
        raise argparse.ArgumentTypeError(
            f"unknown profile {profile!r} in {entry!r}; known: {', '.join(sorted(PROFILES))}"
        )
    return name, profile


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


def _port(value: str) -> int:
    """A TCP port number, 0 to 65535 (0: any free port)."""
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number from 0 to 65535, got {value!r}")
    return port


def _hedge_delay(value: str) -> float | str:
    """``auto`` (the adaptive delay) or a non-negative number of seconds."""
    if value == "auto":
        return value
    try:
        delay = float(value)
    except ValueError:
        delay = -1.0
    if not delay >= 0 or delay == float("inf"):
        raise argparse.ArgumentTypeError(f"expected seconds (>= 0) or auto, got {value!r}")
    return delay


def _hedging(args: argparse.Namespace) -> HedgeSettings | None:
    """The gateway's hedging across replicas (None: --hedge not given)."""
    if getattr(args, "hedge", None) is None:
        return None
    if args.config is not None:
        raise HotloopError("with --config, set hedge and hedge_budget in its [[upstream]] tables")
    if args.hedge_budget < 0:
        raise HotloopError("--hedge-budget must not be negative")
    if args.hedge_stall is not None and not args.hedge_stall > 0:
        raise HotloopError("--hedge-stall must be a positive number of seconds")
    if not args.upstream and args.replicas < 2:
        raise HotloopError("--hedge needs --replicas 2 or more (a hedge goes to another one)")
    delay = None if args.hedge == "auto" else float(args.hedge)
    return HedgeSettings(delay=delay, budget=args.hedge_budget, stall=args.hedge_stall)


def _hedging_summary(hedging: HedgeSettings) -> str:
    """How the startup line names the hedging in effect, e.g. ``hedge auto (budget 0.1)``."""
    delay = "auto" if hedging.delay is None else f"{hedging.delay:g} s"
    stall = f", stall {hedging.stall:g} s" if hedging.stall is not None else ""
    return f"hedge {delay} (budget {hedging.budget:g}{stall})"


def _bind_error(host: str, port: int, exc: OSError) -> str:
    """The one line saying why the gateway cannot listen on ``host:port``."""
    where = f"{host}:{port}"
    if isinstance(exc, socket.gaierror):
        return (
            f"cannot listen on {where}: cannot resolve {host!r} to an IPv4 address "
            f"({exc.strerror or exc}); give --host an address of this machine, e.g. 127.0.0.1"
        )
    if exc.errno == errno.EADDRINUSE:
        return (
            f"cannot listen on {where}: the address is already in use (another gateway?); "
            "choose another port with --port"
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return (
            f"cannot listen on {where}: permission denied (ports below 1024 need privileges); "
            "choose another port with --port"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return (
            f"cannot listen on {where}: {host} is not an address of this machine; "
            "give --host one of its addresses, e.g. 127.0.0.1"
        )
    reason = (exc.strerror or str(exc)).rstrip(".")
    return f"cannot listen on {where}: {reason[:1].lower()}{reason[1:]}; check --host and --port"


def _sim_only_options(args: argparse.Namespace) -> list[str]:
    """The options given that configure only the simulated model (``gateway``)."""
    given = {
        "--scenario": args.scenario is not None,
        "--profile": args.profile is not None,
        "--latency": bool(args.latency),
        "--model-profile": bool(args.model_profile),
        "--replicas": args.replicas != 1,
        "--replica-slots": args.replica_slots is not None,
        "--seed": args.seed != 0,
    }
    return [option for option, set_ in given.items() if set_]


def _upstream_only_options(args: argparse.Namespace) -> list[str]:
    """The options given that configure only an ``--upstream`` (``gateway``)."""
    given = {
        "--api": args.api != "chat",
        "--model": bool(args.model),
        "--api-key-env": args.api_key_env is not None,
        "--chain": args.chain,
        "--websocket": args.websocket,
    }
    return [option for option, set_ in given.items() if set_]


def _misplaced(options: Sequence[str], what: str, advice: str) -> HotloopError:
    """The error for ``options`` given where they do nothing: ``--a and --b configure <what>;
    <advice>``."""
    verb = "configures" if len(options) == 1 else "configure"
    return HotloopError(f"{_listing(options)} {verb} {what}; {advice}")


def _listing(items: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _require_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Name the choices, not the internal ``dest``, when no subcommand is given."""
    subparsers.metavar = "{" + ",".join(subparsers.choices) + "}"


def _api_key(entry: str) -> tuple[str, str]:
    """``KEY`` or ``KEY=TENANT`` (the key itself cannot contain ``=``)."""
    key, _, tenant = entry.partition("=")
    if not key:
        raise argparse.ArgumentTypeError(f"expected KEY or KEY=TENANT, got {entry!r}")
    return key, tenant


def _add_upstream_options(
    parser: argparse.ArgumentParser, *, upstream_help: str, model_help: str
) -> None:
    """The options naming a real model server, the same for ``gateway`` and ``demo``."""
    parser.add_argument(
        "--upstream",
        action="append",
        default=[],
        metavar="URL",
        help=upstream_help,
    )
    parser.add_argument(
        "--api",
        choices=["chat", "responses", "llamacpp"],
        default="chat",
        help="what --upstream speaks: Chat Completions (default), the Responses API, or "
        "llama.cpp's native /completion (token-exact continuation)",
    )
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME[=UPSTREAM_NAME]",
        help=model_help,
    )
    parser.add_argument(
        "--api-key-env",
        default=None,
        metavar="VAR",
        help="the environment variable holding the upstream's key, e.g. OPENAI_API_KEY",
    )
    parser.add_argument(
        "--chain",
        action="store_true",
        help="--api responses: continue by the upstream's previous_response_id (the upstream "
        "must store responses) instead of sending the whole context each turn",
    )
    parser.add_argument(
        "--websocket",
        action="store_true",
        help="--api responses: talk to the upstream in WebSocket mode, one upstream socket per "
        "client connection, sending only new items while the socket lives",
    )


def _parser() -> argparse.ArgumentParser:
    from hotloop.bench.command import add_arguments, non_negative

    parser = argparse.ArgumentParser(prog="hotloop", description="Fast tool-calling agent loops.")
    parser.add_argument("--version", action="version", version=f"hotloop {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    gateway = commands.add_parser(
        "gateway", help="serve the OpenAI Responses API (HTTP/SSE + WebSocket mode)"
    )
    gateway.add_argument(
        "--backend",
        choices=["sim", "upstream"],
        default=None,
        help="the embedded simulated model (default), or the upstream(s) of --upstream/--config",
    )
    _add_upstream_options(
        gateway,
        upstream_help="a model server's base URL, e.g. http://127.0.0.1:8080/v1 (repeat for "
        "replicas)",
        model_help="serve the upstream's model UPSTREAM_NAME as NAME (default: the upstream's "
        "list)",
    )
    gateway.add_argument(
        "--config",
        type=Path,
        default=None,
        help="a TOML file of [[upstream]] tables (several upstreams and models)",
    )
    gateway.add_argument(
        "--scenario",
        default=None,
        help=f"the simulated model's scenario: bundled ({', '.join(bundled_scenarios())}; "
        "default: coding) or a path to a JSON file (not with --upstream/--config)",
    )
    gateway.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default=None,
        help="the simulated model's latency profile (default: fast; not with --upstream/--config)",
    )
    gateway.add_argument(
        "--latency",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one latency parameter of the default model, e.g. --latency ttft_s=0.5 "
        "(not with --upstream/--config)",
    )
    gateway.add_argument(
        "--model-profile",
        action="append",
        default=[],
        type=_model_profile,
        metavar="NAME=PROFILE",
        help="also serve simulated model hotloop-sim@NAME (every scenario: "
        "hotloop-sim@NAME:<scenario>) with latency profile PROFILE, e.g. large=frontier-tail",
    )
    gateway.add_argument(
        "--replicas",
        type=_positive,
        default=1,
        help="replicas of each simulated model, each with its own queue, prefix cache and "
        "tail draws (default: 1)",
    )
    gateway.add_argument(
        "--replica-slots",
        type=_positive,
        default=None,
        metavar="N",
        help="responses one replica generates at once; more wait in its queue (default: no bound)",
    )
    gateway.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the tail profiles' draws (same seed, same order of requests: same run)",
    )
    gateway.add_argument(
        "--hedge",
        type=_hedge_delay,
        default=None,
        metavar="SECONDS|auto",
        help="hedge each turn across a model's replicas: a turn with no output after SECONDS "
        "(auto: the p95 of the times to first output seen so far) also goes to another "
        "replica, the first to answer wins; a turn that fails before output moves to another "
        "replica (needs --replicas 2 or more, or several upstream URLs)",
    )
    gateway.add_argument(
        "--hedge-stall",
        type=float,
        default=None,
        metavar="SECONDS",
        help="with --hedge: a turn whose output went quiet this long is generated again on "
        "another replica, which takes over once it has reproduced the output sent so far",
    )
    gateway.add_argument(
        "--hedge-budget",
        type=float,
        default=0.1,
        metavar="SHARE",
        help="with --hedge: hedges at most this share of turns (default: 0.1)",
    )
    gateway.add_argument(
        "--host", default="127.0.0.1", help="the address to listen on (default: 127.0.0.1)"
    )
    gateway.add_argument(
        "--port", type=_port, default=8000, help="the port (default: 8000; 0: any free port)"
    )
    gateway.add_argument(
        "--api-key",
        action="append",
        default=[],
        type=_api_key,
        metavar="KEY[=TENANT]",
        help="accept only these bearer tokens; stored responses are private to the key's "
        "tenant (default: the key itself; keys naming one tenant share its responses)",
    )
    gateway.add_argument(
        "--store",
        type=Path,
        default=None,
        metavar="FILE",
        help="SQLite file for store:true responses (default: in memory)",
    )
    gateway.add_argument(
        "--max-message-mib",
        type=int,
        default=64,
        metavar="N",
        help="the largest request body or WebSocket frame, MiB (413 beyond; default: 64)",
    )
    gateway.add_argument(
        "--max-header-kib",
        type=int,
        default=64,
        metavar="N",
        help="HTTP request line + headers, KiB (431 beyond; default: 64)",
    )
    gateway.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        help="seconds to receive a request's headers (408 and close beyond; default: 10)",
    )
    gateway.add_argument(
        "--body-timeout",
        type=float,
        default=30.0,
        help="longest wait in seconds for a request body's next bytes (408 and close beyond; "
        "default: 30)",
    )
    gateway.add_argument("--log-level", default="info", help="uvicorn's log level (default: info)")

    demo = commands.add_parser(
        "demo",
        help="play a scenario the naive way and with hotloop; compare; write a report",
        description="Play a scenario twice through one in-process gateway, as a naive loop "
        "(stateless HTTP, tools one at a time after each turn) and with hotloop (warm "
        "WebSocket, tools started as their calls stream in); compare; write an HTML report. "
        "By default the embedded simulated model plays the scenario's script. With --upstream "
        "a real model runs instead: it gets the scenario's instructions, task and tools (tools "
        "that accept any arguments and answer after the scenario's latency with its simulated "
        "output), and a run fails only when the model does (an error, no final answer).",
    )
    demo.add_argument(
        "--scenario",
        default="coding",
        help=f"bundled scenario ({', '.join(bundled_scenarios())}; default: coding) or a path "
        "to a JSON file; with --upstream, its instructions, task and tools are what the real "
        "model gets",
    )
    demo.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default=None,
        help="the simulated model's latency profile (default: fast; not with --upstream)",
    )
    demo.add_argument(
        "--latency",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one latency parameter of the simulated model (not with --upstream)",
    )
    _add_upstream_options(
        demo,
        upstream_help="run against the real model server at this base URL, e.g. "
        "http://127.0.0.1:8080/v1, instead of the simulated model (repeat for replicas)",
        model_help="the model to run: NAME, served as the upstream's UPSTREAM_NAME (default: "
        "the upstream's only model); the first --model is the one run",
    )
    demo.set_defaults(config=None, backend=None)  # what _upstream_backend also reads
    demo.add_argument(
        "--tool-time-scale",
        type=non_negative,
        default=1.0,
        help="multiply the scenario's tool latencies (0 = instant tools; default: 1)",
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
    add_arguments(bench)

    trace = commands.add_parser("trace", help="look at saved traces (JSONL files of a Tracer)")
    trace_commands = trace.add_subparsers(dest="trace_command", required=True)
    show = trace_commands.add_parser("show", help="draw a waterfall of each run in a trace file")
    show.add_argument("file", type=Path, help="a JSONL trace file (hotloop.trace.JSONLSink)")
    show.add_argument("--width", type=int, default=None, help="columns (default: the terminal's)")
    _require_command(trace_commands)

    report = commands.add_parser(
        "report",
        help="write the HTML waterfall report of the runs in trace files",
        description="Write the self-contained HTML report hotloop demo writes (a waterfall of "
        "each run on one shared time axis, its phase totals, the runs side by side) for every "
        "run in JSONL trace files written by hotloop.trace.JSONLSink.",
    )
    report.add_argument(
        "files", type=Path, nargs="+", metavar="TRACE", help="JSONL trace file(s), read in order"
    )
    report.add_argument(
        "--output",
        "-o",
        type=Path,
        default=None,
        metavar="PATH",
        help="where to write the report (default: the first trace file with .html for its "
        "suffix, e.g. runs.jsonl -> runs.html)",
    )
    report.add_argument("--title", default=None, metavar="TEXT", help="the report's heading")
    _require_command(commands)
    return parser


def _upstream_backend(args: argparse.Namespace) -> Backend | None:
    """The upstream backend the options ask for, or None for the simulated model."""
    from hotloop.backends.routing import RoutedBackend, build_backend, load_upstreams
    from hotloop.backends.upstream import UpstreamConfig

    if args.config is not None and args.upstream:
        raise HotloopError("give upstreams either with --upstream or in --config, not both")
    if args.config is not None:
        configs = load_upstreams(args.config)
    elif args.upstream:
        models: dict[str, str] = {}
        for entry in args.model:
            name, _, upstream_name = entry.partition("=")
            models[name] = upstream_name or name
        configs = [
            UpstreamConfig(
                urls=tuple(url.rstrip("/") for url in args.upstream),
                api=args.api,
                models=models,
                api_key_env=args.api_key_env,
                chain=args.chain,
                websocket=args.websocket,
                hedging=_hedging(args),
            )
        ]
    elif args.backend == "upstream":
        raise HotloopError("--backend upstream needs --upstream URL or --config FILE")
    else:
        return None
    if args.backend == "sim":
        raise HotloopError("--backend sim serves the simulated model: drop --upstream/--config")
    backends = [build_backend(config) for config in configs]
    return backends[0] if len(backends) == 1 else RoutedBackend(backends)


async def _serve(args: argparse.Namespace) -> None:
    profile = get_profile(args.profile or "fast", _latency_overrides(args.latency))
    hedging = _hedging(args)
    sim_only = _sim_only_options(args)
    if sim_only and (args.upstream or args.config is not None):
        raise _misplaced(
            sim_only,
            "the simulated model",
            f"drop {'it' if len(sim_only) == 1 else 'them'} with --upstream/--config "
            "(a real upstream has its own)",
        )
    upstream_only = _upstream_only_options(args)
    if upstream_only and not args.upstream:
        raise _misplaced(
            upstream_only,
            "--upstream",
            "with --config, set them for each upstream in the file"
            if args.config is not None
            else "give the upstream's URL with --upstream",
        )
    upstream = _upstream_backend(args)
    scenario = args.scenario or "coding"
    config = GatewayConfig(
        api_keys=frozenset(key for key, _ in args.api_key) if args.api_key else None,
        tenants={key: tenant for key, tenant in args.api_key if tenant},
        store_path=args.store,
        max_message_bytes=args.max_message_mib * 1024 * 1024,
        max_header_bytes=args.max_header_kib * 1024,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
    )
    backend = (
        upstream
        if upstream is not None
        else SimBackend(
            scenario,
            profile,
            models=dict(args.model_profile),
            replicas=args.replicas,
            seed=args.seed,
            replica_slots=args.replica_slots,
            hedging=hedging,
        )
    )
    try:
        server = GatewayServer(
            backend, config, host=args.host, port=args.port, log_level=args.log_level
        )
    except OSError as exc:  # the port is taken, a privileged port, an unknown host...
        raise HotloopError(_bind_error(args.host, args.port, exc)) from None
    what = (
        f"upstream {', '.join(args.upstream) or args.config}"
        if upstream is not None
        else f"scenario {scenario!r}, profile {profile.name!r}"
        + "".join(f", @{name} {name_profile!r}" for name, name_profile in args.model_profile)
        + (f", {args.replicas} replicas" if args.replicas != 1 else "")
    ) + (f"; {_hedging_summary(hedging)}" if hedging is not None else "")

    def ready() -> None:
        print(
            f"hotloop gateway: {server.base_url} (WebSocket {server.websocket_url}); "
            f"{what}; models: {', '.join(server.gateway.models())}",
            flush=True,
        )

    await server.serve_forever(on_ready=ready)


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


def _report_output(files: Sequence[Path], output: Path | None) -> Path:
    """``--output``, or the first trace file with ``.html`` for its suffix (never a trace)."""
    target = output if output is not None else files[0].with_suffix(".html")
    if any(target.resolve() == path.resolve() for path in files):
        raise HotloopError(f"the report would overwrite the trace file {target}: give --output")
    return target


def _write_trace_report(files: Sequence[Path], output: Path | None, title: str | None) -> None:
    from hotloop.report import ReportRun, runs_from_spans, write_report
    from hotloop.trace import read_spans

    target = _report_output(files, output)
    runs: list[ReportRun] = []
    for path in dict.fromkeys(files):  # a file named twice is read once
        try:
            spans = read_spans(path)  # names the file and line of a malformed span
        except OSError as exc:
            raise HotloopError(f"cannot read {path}: {exc.strerror or exc}") from exc
        if not spans:
            raise HotloopError(f"{path} holds no spans")
        try:
            runs += runs_from_spans(spans)
        except HotloopError as exc:
            raise HotloopError(f"{path}: {exc}") from exc
    names = ", ".join(str(path) for path in dict.fromkeys(files))
    count = f"{len(runs)} run" + ("s" if len(runs) != 1 else "")
    written = write_report(
        target,
        runs,
        title=title,
        versus=False,
        subtitle=f"{count} traced in {names}. Every waterfall shares one time axis.",
    )
    print(f"report: {written} ({count}; opens offline)")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "gateway":
            asyncio.run(_serve(args))
        elif args.command == "demo":
            from hotloop.demo import DemoUpstream, run_demo

            backend = _upstream_backend(args)
            if backend is not None and (args.profile is not None or args.latency):
                raise HotloopError(
                    "--profile and --latency set the simulated model's latency; "
                    "a real upstream has its own"
                )
            profile = get_profile(args.profile or "fast", _latency_overrides(args.latency))
            upstream = (
                DemoUpstream(
                    backend,
                    ", ".join(args.upstream),
                    args.model[0].partition("=")[0] if args.model else None,
                )
                if backend is not None
                else None
            )
            outcome = asyncio.run(
                run_demo(
                    args.scenario,
                    profile,
                    tool_time_scale=args.tool_time_scale,
                    report_path=args.report,
                    live=not args.no_live,
                    upstream=upstream,
                )
            )
            if not outcome.ok:
                return 1
        elif args.command == "bench":
            from hotloop.bench.command import run_command

            return run_command(args)
        elif args.command == "trace":
            _show_trace(args.file, args.width)
        elif args.command == "report":
            _write_trace_report(args.files, args.output, args.title)
    except HotloopError as exc:
        print(f"hotloop: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # asyncio.run has cancelled the command's tasks: servers and clients are closed.
        print("hotloop: interrupted", file=sys.stderr)
        return 130
    return 0


def _version() -> str:
    from hotloop import __version__

    return __version__


if __name__ == "__main__":
    sys.exit(main())
