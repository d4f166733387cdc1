"""Executing a scenario's tools in simulation: their latency and a deterministic output.

The gateway never runs tools (clients do); the demo, the benchmarks and the runtime's tests use
these to play a scenario's tools faithfully: each call sleeps the tool's ``latency_ms`` and
returns ``output_bytes`` of text that depends only on the call, so two runs of one scenario
send the model identical histories.
"""

from __future__ import annotations

import asyncio
import hashlib

from hotloop.sim.scenario import ToolSpec

__all__ = ["run_tool", "tool_latency", "tool_output"]

_FILLER = (
    "def handler(event, context):\n    total = sum(line.amount for line in event.lines)\n"
    "    return {'status': 'ok', 'total': total}\n"
)


def tool_output(spec: ToolSpec, arguments: str) -> str:
    """The deterministic result text of calling ``spec`` with ``arguments``."""
    digest = hashlib.sha256(f"{spec.name}\0{arguments}".encode()).hexdigest()[:12]
    head = f"[{spec.name} {digest}] "
    size = max(spec.output_bytes, len(head))
    body = (_FILLER * (size // len(_FILLER) + 1))[: size - len(head)]
    return head + body


async def tool_latency(spec: ToolSpec, *, time_scale: float = 1.0) -> None:
    """Sleep for the tool's latency times ``time_scale`` (0 = no sleep at all)."""
    if spec.latency_ms > 0 and time_scale > 0:
        await asyncio.sleep(spec.latency_ms / 1000 * time_scale)


async def run_tool(spec: ToolSpec, arguments: str, *, time_scale: float = 1.0) -> str:
    """Sleep for the tool's latency (times ``time_scale``; 0 = instant), return its output."""
    await tool_latency(spec, time_scale=time_scale)
    return tool_output(spec, arguments)
