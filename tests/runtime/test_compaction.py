"""Background compaction: a long context is summarised beside the turns and switched to at a
turn boundary, never waiting.

The policy's cuts are pinned without sockets (a fake ``request_aside`` whose future the test
resolves); end to end, a loopback gateway on the simulated model plays the ``research``
scenario and the generic mode with large tool results, and every request the runner hands the
transport is kept, so what the model got on each turn is checked exactly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from hotloop.backends.sim import model_id
from hotloop.gateway import GatewayServer
from hotloop.runtime import Agent, Compact, Runner, RunResult, TurnState, tool
from hotloop.runtime.compaction import SUMMARY_HEADER, SUMMARY_METADATA
from hotloop.sim.latency import get_profile
from hotloop.sim.scenario import load_scenario
from hotloop.sim.summary import SUMMARY_METADATA_KEY, SUMMARY_METADATA_VALUE
from hotloop.testing import ExecutionLog, check_run, scenario_tools
from hotloop.trace import timeline_from_result
from hotloop.trace.spans import spans_from_result, timeline_from_spans
from hotloop.transport import ModelRequest, connect
from hotloop.wire import codec
from hotloop.wire.items import FunctionCall, FunctionCallOutput, Item, Message, Reasoning
from hotloop.wire.responses import ResponseObject
from support import RecordingTransport, normalized

RESEARCH = load_scenario("research")
#: Bytes of each generic-mode tool result (about 500 tokens).
OUTPUT_BYTES = 2000
_FILLER = "the quick brown fox jumps over the lazy dog; " * 64


@tool(pure=True)
async def fetch(query: str) -> str:
    """Fetch a page.

    Args:
        query: What to fetch.
    """
    return (f"[{query}] " + _FILLER)[:OUTPUT_BYTES]


def generic(turns: int) -> str:
    return model_id(None, f"generic:{turns}")


def model_requests(client: RecordingTransport) -> list[ModelRequest]:
    """The turns' requests (not the summaries')."""
    return [request for request in client.sent if "metadata" not in request.settings]


def summary_requests(client: RecordingTransport) -> list[ModelRequest]:
    return [request for request in client.sent if "metadata" in request.settings]


def summary_at(history: Sequence[Item]) -> int | None:
    """Where the summary message sits in a request's history (None: not compacted)."""
    for index, item in enumerate(history):
        if isinstance(item, Message) and item.text.startswith(SUMMARY_HEADER):
            return index
    return None


def pairs_intact(history: Sequence[Item]) -> bool:
    """Every function_call_output has its function_call before it."""
    calls: set[str] = set()
    for item in history:
        if isinstance(item, FunctionCall):
            calls.add(item.call_id)
        elif isinstance(item, FunctionCallOutput) and item.call_id not in calls:
            return False
    return True


async def run_recorded(
    server: GatewayServer, agent: Agent, task: str
) -> tuple[RunResult, RecordingTransport]:
    async with connect(server.base_url) as inner:
        client = RecordingTransport(inner)
        result = await Runner.run(agent, task, client=client)
    return result, client


# -- the policy alone ------------------------------------------------------------------------


class FakeAsides:
    """``request_aside`` for a TurnState outside a run: futures the test resolves."""

    def __init__(self) -> None:
        self.sent: list[ModelRequest] = []
        self.futures: list[asyncio.Future[ResponseObject]] = []
        self.timeouts: list[float | None] = []

    def __call__(
        self, request: ModelRequest, purpose: str, timeout: float | None
    ) -> asyncio.Future[ResponseObject]:
        assert purpose == "summary"
        future: asyncio.Future[ResponseObject] = asyncio.get_running_loop().create_future()
        self.sent.append(request)
        self.timeouts.append(timeout)
        self.futures.append(future)
        return future

    def answer(self, text: str) -> None:
        output = (Message(role="assistant", content=text),)
        self.futures[-1].set_result(ResponseObject("resp_s", 0, "m", "completed", output))


TASK = Message("user", "the task")


def turn_items(index: int, calls: int) -> list[Item]:
    """One model turn: reasoning, text, ``calls`` parallel calls of 400 characters, results."""
    made = [
        FunctionCall(call_id=f"c{index}.{k}", name="fetch", arguments="{}") for k in range(calls)
    ]
    out: list[Item] = [Reasoning(id=f"rs{index}", summary=()), Message("assistant", "go"), *made]
    out.extend(FunctionCallOutput(call_id=call.call_id, output="r" * 400) for call in made)
    return out


def trailing_input(items: Sequence[Item]) -> int:
    """How many items at the end of ``items`` are input (what the next request sends)."""
    count = 0
    for item in reversed(items):
        if isinstance(item, FunctionCallOutput) or (
            isinstance(item, Message) and item.role == "user"
        ):
            count += 1
        else:
            break
    return count


class Driven:
    """``policy`` consulted turn by turn over a growing history, outside a run: summaries go
    to a :class:`FakeAsides`; what each turn sent, and its new items before the policy, kept."""

    def __init__(self, policy: Compact, history: Sequence[Item] = (TASK,)) -> None:
        self.policy = policy
        self.asides = FakeAsides()
        self.memo: dict[str, Any] = {}
        self.agent = Agent("m", "be brief")
        self.history: list[Item] = list(history)
        self.previous: str | None = None
        self.new_from = 0
        self.sent: list[ModelRequest] = []
        self.originals: list[list[Item]] = []

    def state(self, turn: int, request: ModelRequest, attempt: int = 1) -> TurnState:
        state = TurnState(self.agent, turn, attempt, request, memo=self.memo)
        state._aside = self.asides
        return state

    def turn(self, turn: int) -> tuple[TurnState, ModelRequest | None]:
        """Turn ``turn``'s request through the policy: its state, and what the policy changed."""
        request = ModelRequest("m", self.history, self.new_from, self.previous, "be brief")
        self.originals.append(list(request.new_items))
        state = self.state(turn, request)
        changed = self.policy.before_request(state)
        self.sent.append(changed or request)
        return state, changed

    def answered(self, turn: int, items: Sequence[Item]) -> None:
        """The turn's output and results join the history; the next turn continues it."""
        self.history.extend(items)
        self.new_from = len(self.history) - trailing_input(items)
        self.previous = f"resp_{turn}"


async def test_the_policy_cuts_at_a_turn_boundary_and_switches_when_the_summary_is_in() -> None:
    policy = Compact(threshold_tokens=500, keep_recent_tokens=250, summary_tokens=32)
    run = Driven(policy)
    asides = run.asides
    for turn in range(1, 9):
        state, changed = run.turn(turn)
        if turn == 4:
            assert asides.sent, "past the threshold: a summary was started"
            assert changed is None, "the turn goes out as it was: nothing waits for the summary"
            # A re-sent attempt of this turn starts nothing more.
            assert policy.before_request(state) is None and len(asides.sent) == 1
        if turn == 5:
            asides.answer("the story so far")
        run.answered(turn, turn_items(turn, calls=1 + turn % 2))
    summary = asides.sent[0]
    assert summary.tools == () and dict(summary.settings["metadata"]) == dict(SUMMARY_METADATA)
    assert summary.settings["max_output_tokens"] == 32
    older = list(summary.history[:-1])
    assert older[0] == TASK and pairs_intact(older)
    assert isinstance(older[-1], FunctionCallOutput), "the part summarised ends with results"
    # Turn 6 is the first boundary after the summary came back: a fresh chain, compacted.
    switch = run.sent[5]
    assert switch.previous_response_id is None and switch.new_from == 0
    at = summary_at(switch.history)
    assert at == 1, "the task stays verbatim, the summary follows it"
    kept = switch.history[at + 1 :]
    assert isinstance(kept[0], Reasoning), "the kept part starts with a model output"
    assert pairs_intact(switch.history)
    assert list(kept) == run.history[len(older) : len(older) + len(kept)]
    # The turn after it continues incrementally: the same new items, renumbered.
    after = run.sent[6]
    assert after.previous_response_id == "resp_6" and after.history[1] is switch.history[1]
    assert list(after.new_items) == run.originals[6]
    assert policy.summaries >= 1 and policy.compactions == 1
    assert asides.timeouts[0] == policy.summary_timeout == 120.0
    # A re-sent attempt of a compacted turn is left as it is.
    assert policy.before_request(run.state(7, after, attempt=2)) is None


async def test_what_the_user_said_later_stays_verbatim_before_the_summary() -> None:
    # A conversation continued with previous=: an answer, then the user's next message, then
    # more turns. The part summarised holds that message: it is summarised with the rest, and
    # stays verbatim in what the model gets, after the task and before the summary.
    policy = Compact(threshold_tokens=900, keep_recent_tokens=300, summary_tokens=32)
    run = Driven(policy)
    later = [Message("user", f"now also look at part {k}: " + "p" * 300) for k in range(3)]
    script: list[list[Item]] = []
    for k, message in enumerate(later):
        script += [turn_items(10 * k + 1, 1), turn_items(10 * k + 2, 1)]
        script.append([Message("assistant", f"answer {k}"), message])
    script += [turn_items(turn, 1) for turn in range(40, 46)]
    for turn, items in enumerate(script, 1):
        run.turn(turn)
        if run.asides.futures and not run.asides.futures[-1].done():
            run.asides.answer(f"summary {len(run.asides.futures)}")
        run.answered(turn, items)
    assert policy.compactions >= 2
    switches = [r for r in run.sent if r.previous_response_id is None and summary_at(r.history)]
    for request in switches:
        at = summary_at(request.history)
        assert at is not None and request.history[0] == TASK
        # The later messages before the cut, in order (all three fit in keep_recent_tokens).
        verbatim = list(request.history[1:at])
        assert verbatim and verbatim == later[: len(verbatim)]
    last = switches[-1]
    assert list(last.history[1 : summary_at(last.history)]) == later
    # Each later message was summarised too, the first time it fell in the older part.
    summarised = [m for request in run.asides.sent for m in request.history if m in later]
    assert set(map(id, summarised)) == {id(m) for m in later}
    # Turns after a switch continue it incrementally with exactly their new items.
    for index, request in enumerate(run.sent):
        if summary_at(request.history) is not None and request.previous_response_id:
            assert list(request.new_items) == run.originals[index]
            assert pairs_intact(request.history)


async def test_only_the_latest_later_messages_fit_in_keep_recent_tokens() -> None:
    later = [Message("user", f"part {k}: " + "p" * 300) for k in range(3)]  # ~83 tokens each
    history: list[Item] = [TASK]
    for k, message in enumerate(later):
        history += [*turn_items(k, 1), Message("assistant", f"answer {k}"), message]
    run = Driven(Compact(threshold_tokens=600, keep_recent_tokens=200, summary_tokens=32), history)
    run.answered(9, turn_items(9, 1))
    assert run.turn(10)[1] is None and len(run.asides.sent) == 1
    run.asides.answer("the story so far")
    run.answered(10, turn_items(10, 1))
    switch = run.turn(11)[1]
    assert switch is not None
    at = summary_at(switch.history)
    assert list(switch.history[1:at]) == later[1:], "the two latest fit in 200 tokens"


def test_compact_validates_its_sizes() -> None:
    with pytest.raises(ValueError):
        Compact(threshold_tokens=100, keep_recent_tokens=100)
    with pytest.raises(ValueError):
        Compact(threshold_tokens=100, summary_tokens=200)
    with pytest.raises(ValueError):
        Compact(threshold_tokens=1000, summary_timeout=0)
    with pytest.raises(ValueError, match="max_failures"):
        Compact(threshold_tokens=1000, max_failures=0)  # would never send a summary
    assert Compact(threshold_tokens=1000).keep_recent_tokens == 250
    assert dict(SUMMARY_METADATA) == {SUMMARY_METADATA_KEY: SUMMARY_METADATA_VALUE}


# -- end to end ------------------------------------------------------------------------------


async def test_off_by_default_nothing_changes(gateway: GatewayServer) -> None:
    agent = Agent(generic(6), "Be brief.", [fetch])
    plain, plain_client = await run_recorded(gateway, agent, "look into it")
    unreached = Agent(generic(6), "Be brief.", [fetch], policies=[Compact(1_000_000)])
    compacting, client = await run_recorded(gateway, unreached, "look into it")
    assert normalized(compacting.items) == normalized(plain.items)
    assert compacting.asides == () and plain.asides == ()
    assert [(len(r.history), r.new_from) for r in client.sent] == [
        (len(r.history), r.new_from) for r in plain_client.sent
    ]
    assert all(step.incremental for step in compacting.steps[1:])
    assert not any(span.name == "model.aside" for span in spans_from_result(compacting))


async def test_research_compacts_at_turn_boundaries_and_plays_its_script(
    gateway: GatewayServer,
) -> None:
    log = ExecutionLog()
    tools = scenario_tools(RESEARCH, time_scale=0, log=log)
    model = model_id(None, "research")
    whole, _ = await run_recorded(
        gateway, Agent(model, RESEARCH.instructions, tools), RESEARCH.task
    )
    policy = Compact(threshold_tokens=6000, keep_recent_tokens=2000, summary_tokens=128)
    agent = Agent(model, RESEARCH.instructions, tools, policies=[policy])
    log = ExecutionLog()
    tools = scenario_tools(RESEARCH, time_scale=0, log=log)
    agent = Agent(model, RESEARCH.instructions, tools, policies=[policy])
    result, client = await run_recorded(gateway, agent, RESEARCH.task)
    assert check_run(RESEARCH, result, log) == ()
    assert policy.compactions >= 1
    # The run's history is the whole conversation; only the model's input was compacted.
    assert normalized(result.items) == normalized(whole.items)
    requests = model_requests(client)
    assert len(requests) == len(result.steps)
    compacted = [index for index, r in enumerate(requests) if summary_at(r.history) is not None]
    assert compacted and compacted == list(range(compacted[0], len(requests)))
    for index in compacted:
        request = requests[index]
        assert pairs_intact(request.history)
        assert request.instructions == RESEARCH.instructions
        assert list(request.tools) == list(agent.definitions)
    # The switch is a fresh chain; the model's input shrank.
    first = requests[compacted[0]]
    assert first.previous_response_id is None and not result.steps[compacted[0]].incremental
    for index in compacted:
        used, unused = result.steps[index].usage, whole.steps[index].usage
        assert used is not None and unused is not None
        assert used.input_tokens < unused.input_tokens
    # Each summary is recorded beside the turns, and counted in the run's tokens.
    assert len(result.asides) == len(summary_requests(client)) >= 1
    assert all(aside.purpose == "summary" for aside in result.asides)
    done = [aside for aside in result.asides if aside.usage is not None]
    assert done and all(aside.usage and aside.usage.output_tokens == 128 for aside in done)
    steps_tokens = sum(step.usage.input_tokens for step in result.steps if step.usage)
    aside_tokens = sum(aside.usage.input_tokens for aside in done if aside.usage)
    assert result.usage.input_tokens == steps_tokens + aside_tokens
    spans = [span for span in spans_from_result(result) if span.name == "model.aside"]
    assert len(spans) == len(result.asides)
    assert spans[0].attributes["hotloop.aside.purpose"] == "summary"
    # The waterfall draws each summary on a row of its own, from the run or from its trace.
    bars = timeline_from_result(result)
    asides = [bar for bar in bars if bar.kind == "model.aside"]
    assert len(asides) == len(result.asides) and asides[0].row == "aside · summary"
    assert timeline_from_spans(spans_from_result(result)) == bars


async def test_the_context_stays_bounded_and_the_prefix_byte_identical(
    gateway: GatewayServer,
) -> None:
    turns = 24
    policy = Compact(threshold_tokens=4000, keep_recent_tokens=1200, summary_tokens=64)
    agent = Agent(generic(turns), "Be brief.", [fetch], policies=[policy])
    result, client = await run_recorded(gateway, agent, "read every page")
    whole, _ = await run_recorded(gateway, Agent(generic(turns), "Be brief.", [fetch]), "x")
    assert result.turns == turns + 1 and result.final_output.startswith(f"Done after {turns} ")
    assert policy.compactions >= 2, "the compacted context passed the threshold again"
    tokens = [step.usage.input_tokens for step in result.steps if step.usage]
    unbounded = [step.usage.input_tokens for step in whole.steps if step.usage]
    assert max(tokens) < 4000 + 3 * 600 < max(unbounded)
    requests = model_requests(client)
    # Between two switches, the prefix the model reads first is the same bytes every turn,
    # and the turns after a switch continue its chain incrementally.
    epochs: dict[bytes, list[int]] = {}
    for index, request in enumerate(requests):
        at = summary_at(request.history)
        if at is None:
            continue
        prefix = codec.dumps(
            {
                "instructions": request.instructions,
                "tools": list(request.tools),
                "input": [item.to_dict() for item in request.history[: at + 1]],
            }
        )
        epochs.setdefault(prefix, []).append(index)
    assert len(epochs) == policy.compactions
    for indices in epochs.values():
        assert indices == list(range(indices[0], indices[-1] + 1))
        assert not result.steps[indices[0]].incremental
        assert all(result.steps[index].incremental for index in indices[1:])


async def test_turns_do_not_wait_for_a_slow_summary(gateway_factory: Any) -> None:
    # 400 tokens/s: a 256-token summary takes 0.64 s, a turn's few tokens a few ms.
    slow = get_profile("zero").override(decode_tokens_per_s=400)
    policy = Compact(threshold_tokens=3000, keep_recent_tokens=1000, summary_tokens=256)
    agent = Agent(generic(60), "Be brief.", [fetch], policies=[policy], max_turns=70)
    async with gateway_factory(profile=slow) as server:
        result, client = await run_recorded(server, agent, "read every page")
    assert result.turns == 61
    first = result.asides[0]
    assert first.response_done_ns is not None
    started = first.turn
    requests = model_requests(client)
    switched = next(i for i, r in enumerate(requests) if summary_at(r.history) is not None)
    switch_turn = switched + 1
    # Turns kept going while the summary was generated; the switch came at the first turn
    # boundary after it was in.
    between = [step for step in result.steps if started < step.turn < switch_turn]
    assert len(between) >= 3
    assert all(step.request_sent_ns < first.response_done_ns for step in between)
    assert result.steps[switch_turn - 1].request_sent_ns > first.response_done_ns
    # The loop never waited for it: the summary's span is covered by turns in progress.
    summary_ns = first.response_done_ns - first.request_sent_ns
    turns_ns = [
        (step.request_sent_ns, step.response_done_ns or 0)
        for step in result.steps
        if started <= step.turn < switch_turn
    ]
    busy = sum(
        max(0, min(end, first.response_done_ns) - max(start, first.request_sent_ns))
        for start, end in turns_ns
    )
    assert busy / summary_ns > 0.5  # model time alone; tools fill the rest


async def test_a_summary_still_running_when_the_run_ends_is_recorded_as_cancelled(
    gateway_factory: Any,
) -> None:
    # A 2,000-token summary takes 5 s at 400 tokens/s; the run is over long before.
    slow = get_profile("zero").override(decode_tokens_per_s=400)
    policy = Compact(threshold_tokens=3000, keep_recent_tokens=1000, summary_tokens=2000)
    agent = Agent(generic(30), "Be brief.", [fetch], policies=[policy], max_turns=40)
    async with gateway_factory(profile=slow) as server, connect(server.base_url) as client:
        result = await Runner.run(agent, "read every page", client=client)
        # The records say so when the result is returned, and never change after.
        ended = [(aside.response_done_ns, aside.error) for aside in result.asides]
        await asyncio.sleep(0.05)
        assert [(aside.response_done_ns, aside.error) for aside in result.asides] == ended
    assert ended and ended[-1][1] == "cancelled: the run ended first"
    assert all(done is not None and done <= result.wall_ns for done, _ in ended)


async def test_a_summary_past_its_timeout_is_cancelled_and_tried_again(
    gateway_factory: Any,
) -> None:
    # A 256-token summary takes 0.64 s at 400 tokens/s; the policy gives it 0.1 s.
    slow = get_profile("zero").override(decode_tokens_per_s=400)
    policy = Compact(
        threshold_tokens=3000,
        keep_recent_tokens=1000,
        summary_tokens=256,
        summary_timeout=0.1,
        max_failures=2,
    )
    agent = Agent(generic(40), "Be brief.", [fetch], policies=[policy], max_turns=50)
    async with gateway_factory(profile=slow) as server:
        result, client = await run_recorded(server, agent, "read every page")
    # The run went on as if uncompacted; each summary was cancelled at its timeout, and the
    # policy stopped trying after max_failures.
    assert result.turns == 41
    assert policy.summaries == policy.failed == 2 and policy.compactions == 0
    assert all(summary_at(request.history) is None for request in model_requests(client))
    assert len(result.asides) == 2
    for aside in result.asides:
        assert aside.error == "no response within 0.1 s" and aside.usage is None
        assert aside.response_done_ns is not None
        assert 0.1 <= (aside.response_done_ns - aside.request_sent_ns) / 1e9 < 0.5
    spans = [span for span in spans_from_result(result) if span.name == "model.aside"]
    assert [span.attributes["hotloop.aside.finished"] for span in spans] == [False, False]
    assert spans[0].attributes["hotloop.aside.error"] == "no response within 0.1 s"
    # The waterfall ends each bar where the summary was cancelled, from the run or its trace.
    bars = timeline_from_result(result)
    asides = [bar for bar in bars if bar.kind == "model.aside"]
    assert all(bar.label.endswith(": no response within 0.1 s") for bar in asides)
    assert [bar.duration_ns for bar in bars if bar.kind == "model.aside"] == [
        aside.response_done_ns - aside.request_sent_ns
        for aside in result.asides
        if aside.response_done_ns is not None
    ]
    assert timeline_from_spans(spans_from_result(result)) == bars
