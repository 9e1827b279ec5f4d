"""Conformance of `POST /v1/messages` with the official `anthropic` Python package, unchanged but for base URL and key.

Run by the Rust pipeline test `proxy::the_official_anthropic_sdk_works_unchanged` (tests/tests/pipeline/proxy.rs),
with the same environment as test_openai_sdk.py: GATEWAY_BASE_URL (ending in /v1), GATEWAY_KEY, GATEWAY_BROKE_KEY,
MOCK_URLS. Aliases: `chain` (OpenAI-kind mocks, "Hello from m0", 12 prompt and 5 completion tokens at 1 and 2 USD
per million), `claude` (an anthropic-kind backend on the third mock).
"""

import json
import os
import urllib.request

import anthropic
import pytest

BASE_URL = os.environ["GATEWAY_BASE_URL"].removesuffix("/v1")
KEY = os.environ["GATEWAY_KEY"]
MOCKS = os.environ["MOCK_URLS"].split(",")
MESSAGES = [{"role": "user", "content": "hi"}]
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture
def client():
    # The key in `x-api-key`, as the SDK sends it; no SDK retries: each test decides what the gateway sees.
    return anthropic.Anthropic(base_url=BASE_URL, api_key=KEY, max_retries=0)


def mock(index, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{MOCKS[index]}{path}", data=data, headers={"content-type": "application/json"},
        method="GET" if body is None else "POST",
    )
    return urllib.request.urlopen(request).read()


def last_request(index):
    return json.loads(mock(index, "/__mock/requests"))[-1]


def test_message(client):
    message = client.messages.create(model="chain", max_tokens=100, messages=MESSAGES)
    assert message.type == "message" and message.role == "assistant"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "Hello from m0"
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (12, 5)
    # The upstream got the chat translation, with its own secret, never the caller's key.
    seen = last_request(0)
    assert seen["path"] == "/v1/chat/completions"
    assert seen["body"]["messages"] == [{"role": "user", "content": "hi"}]
    assert seen["body"]["max_tokens"] == 100
    assert seen["x_api_key"] is None


def test_a_bearer_key_works_too():
    bearer = anthropic.Anthropic(base_url=BASE_URL, auth_token=KEY, max_retries=0)
    message = bearer.messages.create(model="chain", max_tokens=10, messages=MESSAGES)
    assert message.content[0].text == "Hello from m0"


def test_system_prompt_and_parameters_reach_the_upstream(client):
    client.messages.create(
        model="chain", max_tokens=50, system="be brief", messages=MESSAGES, stop_sequences=["END"],
        metadata={"user_id": "user-7"}, cache_control={"type": "ephemeral"},
        # This SDK version has no `temperature` argument; the API still takes it.
        extra_body={"temperature": 0.2},
    )
    body = last_request(0)["body"]
    assert body["messages"][0] == {"role": "system", "content": "be brief"}
    assert (body["temperature"], body["stop"], body["user"]) == (0.2, ["END"], "user-7")


def test_the_request_is_metered_like_chat(client):
    raw = client.messages.with_raw_response.create(model="chain", max_tokens=100, messages=MESSAGES)
    # 12 prompt and 5 completion tokens at 1 and 2 USD per million.
    assert raw.headers["x-gateway-cost-usd"] == "0.000022"
    assert raw.headers["x-gateway-backend"] == "up0"
    assert raw.headers["x-request-id"]
    assert raw.parse().content[0].text == "Hello from m0"


def test_an_anthropic_backend_answers_through_the_same_translation(client):
    message = client.messages.create(model="claude", max_tokens=100, messages=MESSAGES)
    assert message.content[0].text == "Hello from m2"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (12, 5)
    assert last_request(2)["path"] == "/v1/messages"


def test_streaming(client):
    with client.messages.stream(model="chain", max_tokens=100, messages=MESSAGES) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hello from m0"
    assert final.content[0].text == "Hello from m0"
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (12, 5)


def test_stream_events_come_in_anthropics_order(client):
    events = list(client.messages.create(model="chain", max_tokens=100, messages=MESSAGES, stream=True))
    kinds = [event.type for event in events]
    assert kinds[0] == "message_start" and kinds[1] == "content_block_start"
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[2:-3]) == {"content_block_delta"}


def test_streaming_through_an_anthropic_backend(client):
    with client.messages.stream(model="claude", max_tokens=100, messages=MESSAGES) as stream:
        text = "".join(stream.text_stream)
    assert text == "Hello from m2"


def test_tools(client):
    message = client.messages.create(model="chain", max_tokens=100, messages=MESSAGES, tools=[WEATHER])
    assert message.stop_reason == "tool_use"
    call = message.content[-1]
    assert (call.type, call.name, call.input) == ("tool_use", "get_weather", {"city": "Paris"})
    tool = last_request(0)["body"]["tools"][0]
    assert tool == {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                                     "parameters": WEATHER["input_schema"]}}
    # The result goes back as the chat `tool` message, after the assistant's call.
    client.messages.create(model="chain", max_tokens=100, tools=[WEATHER], messages=[
        *MESSAGES,
        {"role": "assistant", "content": [{"type": "tool_use", "id": call.id, "name": call.name, "input": call.input}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}]},
    ])
    sent = last_request(0)["body"]["messages"]
    assert sent[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city":"Paris"}'}
    assert sent[2] == {"role": "tool", "tool_call_id": call.id, "content": "sunny"}


def test_tool_choice(client):
    client.messages.create(model="chain", max_tokens=100, messages=MESSAGES, tools=[WEATHER],
                           tool_choice={"type": "tool", "name": "get_weather"})
    assert last_request(0)["body"]["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}


def test_streamed_tool_calls(client):
    with client.messages.stream(model="chain", max_tokens=100, messages=MESSAGES, tools=[WEATHER]) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    call = final.content[-1]
    assert (call.type, call.name, call.input) == ("tool_use", "get_weather", {"city": "Paris"})


def test_streamed_tool_calls_through_an_anthropic_backend(client):
    with client.messages.stream(model="claude", max_tokens=100, messages=MESSAGES, tools=[WEATHER]) as stream:
        final = stream.get_final_message()
    call = final.content[-1]
    assert (call.type, call.name, call.input) == ("tool_use", "get_weather", {"city": "Paris"})


def test_tool_policies_govern_messages(client):
    # The `enforce-tools` policy rejects invalid calls: the model's broken arguments never reach the caller.
    mock(0, "/__mock/script", [{"tool_arguments": "{bad json"}])
    with pytest.raises(anthropic.UnprocessableEntityError) as raised:
        client.messages.create(model="chain", max_tokens=100, messages=MESSAGES, tools=[WEATHER],
                               metadata={"tools": "enforce"})
    assert raised.value.body["type"] == "error"
    assert raised.value.body["error"]["type"] == "invalid_request_error"
    assert "invalid tool call" in raised.value.body["error"]["message"]


def test_a_bad_key_is_an_authentication_error():
    stranger = anthropic.Anthropic(base_url=BASE_URL, api_key="gwk_wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as raised:
        stranger.messages.create(model="chain", max_tokens=10, messages=MESSAGES)
    assert raised.value.body == {"type": "error",
                                 "error": {"type": "authentication_error", "message": "incorrect API key provided"}}
    # Refused before the chat pipeline, yet with the request id every answer carries.
    assert raised.value.response.headers["x-request-id"]


def test_a_bad_request_names_what_is_wrong(client):
    with pytest.raises(anthropic.BadRequestError) as raised:
        client.messages.create(model="chain", max_tokens=10, messages=MESSAGES, extra_body={"top_k": 5})
    assert raised.value.body["error"]["type"] == "invalid_request_error"
    assert "'top_k' is not supported" in raised.value.body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError) as raised:
        client.messages.create(model="chain", max_tokens=10, messages=MESSAGES, service_tier="auto")
    assert "'service_tier' is not supported" in raised.value.body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model="chain", max_tokens=10, messages=[{"role": "system", "content": "x"}])


def test_an_unknown_model_is_not_found(client):
    with pytest.raises(anthropic.NotFoundError) as raised:
        client.messages.create(model="no-such-alias", max_tokens=10, messages=MESSAGES)
    assert raised.value.body["error"]["type"] == "not_found_error"


def test_an_exhausted_budget_is_a_rate_limit_error_the_sdk_does_not_retry():
    broke = anthropic.Anthropic(base_url=BASE_URL, api_key=os.environ["GATEWAY_BROKE_KEY"], max_retries=2)
    with pytest.raises(anthropic.RateLimitError) as raised:
        broke.messages.create(model="chain", max_tokens=10, messages=MESSAGES)
    assert raised.value.body["error"]["type"] == "rate_limit_error"
    assert "broke-total" in raised.value.body["error"]["message"]
    assert raised.value.response.headers["x-should-retry"] == "false"


def test_an_upstream_failure_mid_stream_is_an_error_event(client):
    mock(0, "/__mock/script", [{"chunks": 4, "cut_after": 1}])
    with pytest.raises(anthropic.APIStatusError) as raised:
        with client.messages.stream(model="chain", max_tokens=100, messages=MESSAGES) as stream:
            for _ in stream:
                pass
    assert raised.value.body["type"] == "error"
