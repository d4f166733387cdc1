"""Structured output: the final answer validated into a type, on every transport.

The simulated model answers a request whose ``text.format`` carries a JSON schema with a value
of that schema (synthesized from it), so each test checks the whole path: the schema goes out
(as ``text.format``, or ``response_format`` over Chat Completions), the answer comes back and
is validated; an answer that does not validate goes back to the model with the errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import pydantic
import pytest
from typing_extensions import TypedDict  # pydantic needs it before Python 3.12

from hotloop.backends.sim import SimBackend
from hotloop.gateway import GatewayServer
from hotloop.runtime import Agent, OutputValidationError, Runner
from hotloop.sim.scenario import Scenario, Turn
from hotloop.transport import connect
from hotloop.wire.items import Message

MODEL = "hotloop-sim"
ANSWER = Scenario(name="answer", turns=(Turn(text="Here is the answer."),))


class Invoice(pydantic.BaseModel):
    number: str
    total: float
    status: Literal["paid", "open"]


@dataclass
class Point:
    x: int
    y: int


class Weather(TypedDict):
    city: str
    celsius: float


@pytest.fixture
async def server() -> Any:
    async with GatewayServer(SimBackend(ANSWER, "zero")) as gateway:
        yield gateway


@pytest.mark.parametrize("transport", ["websocket", "http", "chat"])
async def test_a_pydantic_model_comes_back_validated(server: GatewayServer, transport: Any) -> None:
    async with connect(server.base_url, transport=transport) as client:
        result = await Runner.run(Agent(MODEL, output_type=Invoice), "Invoice?", client=client)
    assert isinstance(result.output, Invoice)
    assert result.output.status in ("paid", "open")
    assert Invoice.model_validate_json(result.final_output) == result.output


@pytest.mark.parametrize(
    ("output_type", "check"),
    [
        (Point, lambda value: isinstance(value, Point) and isinstance(value.x, int)),
        (Weather, lambda value: isinstance(value, dict) and set(value) == {"city", "celsius"}),
        (int, lambda value: isinstance(value, int) and not isinstance(value, bool)),
        (list[str], lambda value: isinstance(value, list)),
        (Literal["yes", "no"], lambda value: value in ("yes", "no")),
    ],
)
async def test_dataclasses_typeddicts_and_primitives(
    server: GatewayServer, output_type: Any, check: Any
) -> None:
    agent = Agent(MODEL, output_type=output_type)
    fmt = agent.settings["text"]["format"]
    assert fmt["type"] == "json_schema" and fmt["schema"]["type"] == "object"
    async with connect(server.base_url) as client:
        result = await Runner.run(agent, "Answer.", client=client)
    assert check(result.output), result.output


def test_closed_schemas_are_sent_strict() -> None:
    closed = Agent(MODEL, output_type=int).settings["text"]["format"]
    assert closed["strict"] is True and closed["schema"]["required"] == ["result"]
    assert Agent(MODEL, output_type=Invoice).settings["text"]["format"]["strict"] is False


class Checked(pydantic.BaseModel):
    """Valid JSON for its schema, refused by a validator the first ``refusals`` times."""

    number: str
    refusals: int = 0

    @pydantic.field_validator("number")
    @classmethod
    def not_yet(cls, value: str) -> str:
        REFUSED.append(value)
        if len(REFUSED) <= LIMIT[0]:
            raise ValueError("must be an invoice number we know")
        return value


REFUSED: list[str] = []
LIMIT = [1]


async def test_an_answer_that_does_not_validate_goes_back_to_the_model(
    server: GatewayServer,
) -> None:
    REFUSED.clear()
    LIMIT[0] = 1
    async with connect(server.base_url) as client:
        result = await Runner.run(Agent(MODEL, output_type=Checked), "Invoice?", client=client)
    assert isinstance(result.output, Checked) and len(REFUSED) == 2
    assert result.turns == 2
    retry = [item for item in result.items if isinstance(item, Message) and item.role == "user"]
    assert "does not match the required format: number: Value error" in retry[-1].text
    # The retry continued the conversation: only the new items went out.
    assert result.steps[1].incremental


async def test_retries_are_bounded_and_the_error_keeps_the_run(server: GatewayServer) -> None:
    REFUSED.clear()
    LIMIT[0] = 10
    agent = Agent(MODEL, output_type=Checked, output_retries=2)
    async with connect(server.base_url) as client:
        with pytest.raises(OutputValidationError) as caught:
            await Runner.run(agent, "Invoice?", client=client)
    assert len(REFUSED) == 3
    assert "after 2 retries" in str(caught.value) and caught.value.errors
    assert caught.value.partial is not None and caught.value.partial.turns == 3


def test_a_type_without_a_json_form_is_refused() -> None:
    with pytest.raises(Exception, match="cannot be described as JSON"):
        Agent(MODEL, output_type=object.__new__)
