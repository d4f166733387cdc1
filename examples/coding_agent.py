"""A coding agent on hotloop: typed tools with declared effects, run over a warm WebSocket.

Run it (after `make setup`, which creates `.venv` and installs hotloop into it):

    .venv/bin/python examples/coding_agent.py

It starts a hotloop gateway in-process on the embedded simulated model (the bundled `coding`
scenario: a model fixing a one-cent rounding bug in 25 tool calls over 15 turns), defines the
agent's tools as ordinary Python functions over a small in-memory workspace, and runs the agent
over one WebSocket, printing each tool as it starts and finishes.

What to notice: `read_file`, `list_dir` and `grep` declare what they read, so the runtime runs
them concurrently, and starts each one the moment its arguments are complete in the stream;
`apply_patch` declares the file it writes, so patches to one file keep their order while
patches to different files overlap; `run_tests` reads the whole repository, so it waits for
pending patches (resource keys are hierarchical: `repo` covers every `repo/<path>`).

To run it against a server instead, set `BASE_URL`. A `hotloop gateway` plays the same
scenario (`.venv/bin/hotloop gateway &`, then
`BASE_URL=http://127.0.0.1:8000/v1 .venv/bin/python examples/coding_agent.py`); on any other
Responses server, set `HOTLOOP_MODEL` to a model that can call tools. A real model makes its own
calls, and the tools answer from the toy workspace above.

Environment variables (all optional):

    BASE_URL         a Responses server (`http://host:port/v1`) to run against; default: none,
                     the example starts a gateway of its own in-process
    HOTLOOP_MODEL    with BASE_URL, the model the agent uses; default: `hotloop-sim:coding`
                     (the `coding` scenario, served by every `hotloop gateway`)
    OPENAI_API_KEY   with BASE_URL, the bearer token `hotloop.connect` sends; default: none
    HOTLOOP_PROFILE  the in-process simulated model's latency profile (`fast`, `frontier`,
                     `zero`, ...); default: `fast`; with BASE_URL the server decides
"""

from __future__ import annotations

import asyncio
import os
import time

import hotloop
from hotloop import Agent, Runner, tool
from hotloop.backends import SimBackend
from hotloop.gateway import GatewayServer
from hotloop.runtime import RunFinished, TextDelta, ToolCallFinished, ToolCallStarted
from hotloop.sim import load_scenario

# -- a tiny workspace the tools act on ---------------------------------------------------------

FILES: dict[str, str] = {
    "pyproject.toml": '[project]\nname = "app"\nrequires-python = ">=3.11"\n',
    "src/app/billing/money.py": "def to_money(value):\n    return Decimal(value).quantize(CENT)\n",
    "src/app/billing/proration.py": "def prorate(price, days, period):\n"
    "    daily = round_money(price / period)\n    return daily * days\n",
    "src/app/billing/refunds.py": "def refund_line(line):\n    return to_money(line.amount)\n",
    "src/app/billing/plans.py": "PLANS = {'pro': 24.99, 'team': 49.00}\n",
    "src/app/billing/invoice.py": "def total(lines):\n    return sum(to_money(l) for l in lines)\n",
    "tests/billing/test_proration.py": "def test_prorate_mid_period(): ...\n",
    "tests/billing/test_money.py": "def test_to_money(): ...\n",
    "tests/billing/test_refunds.py": "def test_refund_line(): ...\n",
}
PATCHED: set[str] = set()


@tool(reads=["repo/{path}"])
async def list_dir(path: str) -> list[str]:
    """List the files under a directory of the repository.

    Args:
        path: Directory relative to the repository root.
    """
    await asyncio.sleep(0.015)
    return sorted(name for name in FILES if name.startswith(path.rstrip("/") + "/"))


@tool(reads=["repo/{path}"])
async def read_file(path: str, start_line: int | None = None, end_line: int | None = None) -> str:
    """Read a text file of the repository.

    Args:
        path: File path relative to the repository root.
        start_line: First line to return (1-based).
        end_line: Last line to return.
    """
    await asyncio.sleep(0.045)
    if path not in FILES:
        raise FileNotFoundError(path)  # becomes an error result for the model
    lines = FILES[path].splitlines()
    return "\n".join(lines[(start_line or 1) - 1 : end_line])


@tool(reads=["repo"])
async def grep(
    pattern: str, path: str = ".", glob: str | None = None, ignore_case: bool = False
) -> str:
    """Search the repository for a regular expression.

    Args:
        pattern: The regular expression.
        path: Where to search.
        glob: Only files matching this glob.
        ignore_case: Match case-insensitively.
    """
    await asyncio.sleep(0.110)
    needle = pattern.replace("\\", "").split("(")[0].lower()
    hits = [
        f"{name}:{number}: {line}"
        for name, text in FILES.items()
        for number, line in enumerate(text.splitlines(), 1)
        if needle and needle in line.lower()
    ]
    return "\n".join(hits) or "no matches"


@tool(reads=["repo"])
async def git_diff(ref: str, paths: list[str] | None = None) -> str:
    """Show the diff of the working tree against a git ref.

    Args:
        ref: The git ref to diff against.
        paths: Limit the diff to these paths.
    """
    await asyncio.sleep(0.060)
    return "\n".join(f"M {name}" for name in sorted(PATCHED)) or f"no changes since {ref}"


@tool(writes=["repo/{path}"])
async def apply_patch(path: str, patch: str) -> str:
    """Apply a unified diff to one file.

    Args:
        path: The file the patch changes.
        patch: The unified diff.
    """
    await asyncio.sleep(0.040)
    FILES[path] = FILES.get(path, "") + f"# patched ({len(patch.splitlines())} diff lines)\n"
    PATCHED.add(path)
    return f"patched {path}"


@tool(reads=["repo"], timeout=120)
async def run_tests(path: str, args: list[str] | None = None, timeout_s: int = 600) -> str:
    """Run the test suite under a path.

    Args:
        path: Test directory or file.
        args: Extra pytest arguments.
        timeout_s: Give up after this many seconds.
    """
    await asyncio.sleep(2.4)
    fixed = {"src/app/billing/money.py", "src/app/billing/proration.py"} <= PATCHED
    return "214 passed" if fixed else "2 failed, 57 passed: test_prorate_mid_period (off by 0.01)"


# -- the run -------------------------------------------------------------------------------------

#: The model with BASE_URL and no HOTLOOP_MODEL, and the in-process gateway's: every hotloop
#: gateway serves it, playing the bundled `coding` scenario.
DEFAULT_MODEL = "hotloop-sim:coding"
CODING = load_scenario("coding")


def clip(text: str, width: int = 60) -> str:
    """``text``, cut to ``width`` characters with an ellipsis when it is longer."""
    return text if len(text) <= width else text[: width - 1] + "…"


async def fix(base_url: str, model: str) -> None:
    agent = Agent(
        model,
        CODING.instructions,
        [list_dir, read_file, grep, git_diff, apply_patch, run_tests],
    )
    started = time.perf_counter()
    async with hotloop.connect(base_url) as client:  # one WebSocket, kept warm across runs
        async for event in Runner.run_stream(agent, CODING.task, client=client):
            elapsed = f"{time.perf_counter() - started:6.2f}s"
            if isinstance(event, ToolCallStarted):
                print(f"{elapsed}  ▶ {event.name}({clip(event.arguments)})")
            elif isinstance(event, ToolCallFinished):
                status = "error: " + event.error if event.error else f"{len(event.output)} bytes"
                print(f"{elapsed}  ✓ {event.name} ({event.duration_ns / 1e6:.0f} ms, {status})")
            elif isinstance(event, TextDelta):
                pass  # stream it to a UI here
            elif isinstance(event, RunFinished):
                result = event.result
    print(f"\n{result.final_output}\n")
    print(
        f"{result.turns} model turns, {result.tool_calls} tool calls, "
        f"{result.wall_ns / 1e9:.2f} s; sent {client.stats.bytes_sent:,} bytes over "
        f"{client.stats.connections_opened} connection(s)"
    )


async def main() -> None:
    base_url = os.environ.get("BASE_URL")
    if base_url:
        await fix(base_url, os.environ.get("HOTLOOP_MODEL", DEFAULT_MODEL))
        return
    profile = os.environ.get("HOTLOOP_PROFILE", "fast")  # fast | frontier | zero | ...
    async with GatewayServer(SimBackend(CODING, profile)) as server:
        await fix(server.base_url, DEFAULT_MODEL)


if __name__ == "__main__":
    asyncio.run(main())
