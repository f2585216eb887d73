"""The real clients, unmodified, against the gateway in front of the demo upstream (what `run.py --demo` runs):
the `openai` SDK with tools (streaming and not), structured output with a Pydantic model, the model catalogue;
`langchain-openai` with bind_tools and with_structured_output; a picture through /v1 and /chat.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any, Literal

import openai
import pytest
from langchain_core.messages import AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from server.demo_upstream import DemoOptions, start_demo_upstream
from tests.conftest import RunningGateway, chat

MODEL = "anthropic/claude-3.5-sonnet"
PIXEL = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
        },
    },
}


class Forecast(BaseModel):
    city: str
    temperature_c: float
    conditions: Literal["sunny", "rainy", "cloudy"]
    warnings: list[str]
    windy: bool


@pytest.fixture
def demo(start_gateway: Callable[..., RunningGateway]) -> Iterator[RunningGateway]:
    server, url = start_demo_upstream(DemoOptions(delay=0))
    yield start_gateway(OPENROUTER_BASE_URL=url, CLIENT_API_KEYS="sk-client")
    server.stop()


def sdk(gateway: RunningGateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key="sk-client", base_url=f"{gateway.url}/v1", max_retries=0, timeout=10)


def langchain(gateway: RunningGateway, **options: Any) -> ChatOpenAI:
    return ChatOpenAI(model=MODEL, api_key="sk-client", base_url=f"{gateway.url}/v1", max_retries=0, timeout=10, **options)


# -- openai SDK ----------------------------------------------------------------------------------------


async def test_sdk_tool_call_then_tool_result(demo: RunningGateway) -> None:
    messages: list[Any] = [{"role": "user", "content": "Weather in Oslo?"}]
    async with sdk(demo) as client:
        first = await client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER])
        choice = first.choices[0]
        assert choice.finish_reason == "tool_calls"
        call = choice.message.tool_calls[0]  # type: ignore[index]
        assert call.function.name == "get_weather"  # type: ignore[union-attr]
        assert json.loads(call.function.arguments) == {"city": "demo", "unit": "celsius"}  # type: ignore[union-attr]
        messages += [choice.message, {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 3}'}]
        second = await client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER])
    assert second.choices[0].finish_reason == "stop"
    assert "Weather in Oslo?" in (second.choices[0].message.content or "")


async def test_sdk_streamed_tool_call_is_assembled(demo: RunningGateway) -> None:
    async with sdk(demo) as client:
        async with client.chat.completions.stream(
            model=MODEL, messages=[{"role": "user", "content": "Weather?"}], tools=[WEATHER], tool_choice="required"
        ) as stream:
            final = await stream.get_final_completion()
        raw = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Weather?"}], tools=[WEATHER], stream=True
        )
        deltas = [chunk.choices[0].delta.tool_calls async for chunk in raw if chunk.choices and chunk.choices[0].delta.tool_calls]
    assert final.choices[0].finish_reason == "tool_calls"
    call = final.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "demo", "unit": "celsius"})  # type: ignore[union-attr]
    assert deltas[0][0].id and deltas[0][0].function.name == "get_weather"  # type: ignore[union-attr]
    assert len(deltas) > 2 and all(delta[0].id is None for delta in deltas[1:])  # the arguments came in pieces


async def test_sdk_parse_with_a_pydantic_model(demo: RunningGateway) -> None:
    async with sdk(demo) as client:
        completion = await client.chat.completions.parse(
            model=MODEL, messages=[{"role": "user", "content": "Forecast for Oslo"}], response_format=Forecast
        )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Forecast)
    assert parsed.conditions == "sunny" and parsed.warnings == ["demo"]


async def test_sdk_json_object_mode(demo: RunningGateway) -> None:
    async with sdk(demo) as client:
        completion = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "as json"}], response_format={"type": "json_object"}
        )
    assert json.loads(completion.choices[0].message.content or "") == {"answer": "as json"}


async def test_sdk_lists_and_retrieves_models(start_gateway: Callable[..., RunningGateway]) -> None:
    server, url = start_demo_upstream(DemoOptions(delay=0))
    try:
        gateway = start_gateway(OPENROUTER_BASE_URL=url, ALLOWED_MODELS="openai/gpt-4o-mini", CLIENT_API_KEYS="sk-client")
        async with sdk(gateway) as client:
            page = await client.models.list()
            model = await client.models.retrieve("openai/gpt-4o-mini")
            with pytest.raises(openai.NotFoundError):
                await client.models.retrieve("meta-llama/llama-3.1-8b-instruct")  # in the catalogue, hidden by ALLOWED_MODELS
    finally:
        server.stop()
    assert [entry.id for entry in page.data] == [MODEL, "openai/gpt-4o-mini"]
    assert (model.owned_by, model.object) == ("openai", "model")
    assert model.model_extra is not None and model.model_extra["context_length"] == 128000
    assert model.model_extra["pricing"] == {"prompt": "0.00000015", "completion": "0.0000006"}


async def test_sdk_sends_a_picture(demo: RunningGateway) -> None:
    content: Any = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": PIXEL, "detail": "low"}}]
    async with sdk(demo) as client:
        completion = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}])
    assert "What is this?" in (completion.choices[0].message.content or "")


async def test_chat_sends_a_picture(demo: RunningGateway) -> None:
    content = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": PIXEL}}]
    response = await chat(demo.port, {"messages": [{"role": "user", "content": content}]}, {"Authorization": "Bearer sk-client"})
    assert response.status == 200
    assert "What is this?" in response.text
    assert response.events[-1]["finish_reason"] == "stop"


# -- langchain-openai ----------------------------------------------------------------------------------


@tool
def get_weather(city: str, unit: Literal["celsius", "fahrenheit"]) -> str:
    """Current weather in a city."""
    return f"3 degrees {unit} in {city}"


async def test_langchain_bind_tools_and_answer_the_tool(demo: RunningGateway) -> None:
    llm = langchain(demo).bind_tools([get_weather])
    question = HumanMessage("Weather in Oslo?")
    called = await llm.ainvoke([question])
    assert called.tool_calls[0]["name"] == "get_weather"  # type: ignore[attr-defined]
    assert called.tool_calls[0]["args"] == {"city": "demo", "unit": "celsius"}  # type: ignore[attr-defined]
    result = ToolMessage(get_weather.invoke(called.tool_calls[0]["args"]), tool_call_id=called.tool_calls[0]["id"])  # type: ignore[attr-defined]
    answer = await llm.ainvoke([question, called, result])
    assert "Weather in Oslo?" in str(answer.content)


async def test_langchain_streamed_tool_call(demo: RunningGateway) -> None:
    llm = langchain(demo, streaming=True).bind_tools([get_weather])
    merged: AIMessageChunk | None = None
    async for chunk in llm.astream("Weather?"):
        merged = chunk if merged is None else merged + chunk  # type: ignore[assignment]
    assert merged is not None
    assert [(call["name"], call["args"]) for call in merged.tool_calls] == [("get_weather", {"city": "demo", "unit": "celsius"})]


@pytest.mark.parametrize("method", ["json_schema", "function_calling", "json_mode"])
async def test_langchain_with_structured_output(demo: RunningGateway, method: str) -> None:
    if method == "json_mode":  # JSON mode has no schema: the demo answers {"answer": ...}

        class Answer(BaseModel):
            answer: str

        result = await langchain(demo).with_structured_output(Answer, method="json_mode").ainvoke("Reply in JSON")
        assert result == Answer(answer="Reply in JSON")
        return
    forecast = await langchain(demo).with_structured_output(Forecast, method=method).ainvoke("Forecast for Oslo")  # type: ignore[arg-type]
    assert isinstance(forecast, Forecast)
    assert forecast.city == "demo"
