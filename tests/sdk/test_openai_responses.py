"""Conformance of `POST /v1/responses` with the official `openai` Python package (`client.responses.create`).

Run by the Rust pipeline test `proxy::the_official_python_sdk_speaks_the_responses_api`, with the environment of
test_openai_sdk.py. The gateway translates to chat for every backend and stores nothing.
"""

import json
import os
import urllib.request

import openai
import pytest

BASE_URL = os.environ["GATEWAY_BASE_URL"]
KEY = os.environ["GATEWAY_KEY"]
MOCKS = os.environ["MOCK_URLS"].split(",")
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture
def client():
    return openai.OpenAI(base_url=BASE_URL, api_key=KEY, max_retries=0)


def last_request(index):
    return json.loads(urllib.request.urlopen(f"{MOCKS[index]}/__mock/requests").read())[-1]


def test_text_input(client):
    response = client.responses.create(model="chain", input="hi")
    assert response.object == "response" and response.status == "completed"
    assert response.output_text == "Hello from m0"
    assert response.output[0].type == "message"
    assert (response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens) == (12, 5, 17)
    assert last_request(0)["body"]["messages"] == [{"role": "user", "content": "hi"}]


def test_instructions_items_and_limits_reach_the_upstream(client):
    response = client.responses.create(
        model="chain", instructions="be brief", max_output_tokens=50, temperature=0.3,
        input=[{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
    )
    assert response.instructions == "be brief" and response.max_output_tokens == 50
    body = last_request(0)["body"]
    assert body["messages"] == [{"role": "system", "content": "be brief"},
                                {"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert (body["max_tokens"], body["temperature"]) == (50, 0.3)


def test_the_request_is_metered_like_chat(client):
    raw = client.responses.with_raw_response.create(model="chain", input="hi")
    assert raw.headers["x-gateway-cost-usd"] == "0.000022"
    assert raw.parse().output_text == "Hello from m0"


def test_an_anthropic_backend_answers_too(client):
    assert client.responses.create(model="claude", input="hi").output_text == "Hello from m2"


def test_streaming(client):
    events = list(client.responses.create(model="chain", input="hi", stream=True))
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "Hello from m0"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    completed = events[-1].response
    assert completed.output_text == "Hello from m0"
    assert (completed.usage.input_tokens, completed.usage.output_tokens) == (12, 5)


def test_function_tools(client):
    response = client.responses.create(model="chain", input="weather in Paris?", tools=[WEATHER])
    call = response.output[-1]
    assert (call.type, call.name, json.loads(call.arguments)) == ("function_call", "get_weather", {"city": "Paris"})
    assert last_request(0)["body"]["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": WEATHER["description"], "parameters": WEATHER["parameters"]}}]
    client.responses.create(model="chain", tools=[WEATHER], input=[
        {"role": "user", "content": "weather in Paris?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
    ])
    sent = last_request(0)["body"]["messages"]
    assert sent[1]["tool_calls"][0]["id"] == call.call_id
    assert sent[2] == {"role": "tool", "tool_call_id": call.call_id, "content": "sunny"}


def test_streamed_function_calls(client):
    events = list(client.responses.create(model="chain", input="weather?", tools=[WEATHER], stream=True))
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert json.loads(deltas) == {"city": "Paris"}
    call = events[-1].response.output[-1]
    assert (call.type, call.name, json.loads(call.arguments)) == ("function_call", "get_weather", {"city": "Paris"})


@pytest.mark.parametrize("extra, named", [
    ({"previous_response_id": "resp_123"}, "previous_response_id"),
    ({"store": True}, "store"),
    ({"tools": [{"type": "web_search"}]}, "web_search"),
    ({"reasoning": {"effort": "high"}}, "reasoning"),
])
def test_what_is_not_supported_is_refused_by_name(client, extra, named):
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model="chain", input="hi", **extra)
    assert raised.value.code == "unsupported_request"
    assert f"'{named}'" in raised.value.message


def test_a_bad_key_is_an_authentication_error():
    stranger = openai.OpenAI(base_url=BASE_URL, api_key="gwk_wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        stranger.responses.create(model="chain", input="hi")


def test_an_exhausted_budget_is_refused():
    broke = openai.OpenAI(base_url=BASE_URL, api_key=os.environ["GATEWAY_BROKE_KEY"], max_retries=0)
    with pytest.raises(openai.RateLimitError) as raised:
        broke.responses.create(model="chain", input="hi")
    assert raised.value.code == "budget_exceeded"
