"""SDK conformance: the official `openai` Python package against the gateway, unchanged but for base URL and key.

Run by the Rust pipeline test `proxy::the_official_python_sdk_works_unchanged` (tests/tests/pipeline/proxy.rs),
which serves the data plane and three mock upstreams in its process and passes their addresses in the environment:
GATEWAY_BASE_URL, GATEWAY_KEY, GATEWAY_LIMITED_KEY, GATEWAY_REVOKED_KEY, GATEWAY_BROKE_KEY (a key whose budget no
request fits in), MOCK_URLS (comma-separated).
"""

import json
import os
import urllib.request

import openai
import pytest

BASE_URL = os.environ["GATEWAY_BASE_URL"]
KEY = os.environ["GATEWAY_KEY"]
MOCKS = os.environ["MOCK_URLS"].split(",")
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
def client():
    # No SDK retries: each test decides what the gateway sees.
    return openai.OpenAI(base_url=BASE_URL, api_key=KEY, max_retries=0)


def script(mock_index, behaviours):
    request = urllib.request.Request(
        f"{MOCKS[mock_index]}/__mock/script",
        data=json.dumps(behaviours).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    urllib.request.urlopen(request).read()


def test_chat(client):
    completion = client.chat.completions.create(model="chain", messages=MESSAGES)
    assert completion.choices[0].message.content == "Hello from m0"
    assert completion.model == "upstream-0"
    assert completion.usage.total_tokens == 17


def test_chat_with_raw_response_headers(client):
    raw = client.chat.completions.with_raw_response.create(model="chain", messages=MESSAGES)
    assert raw.headers["x-gateway-backend"] == "up0"
    assert raw.headers["x-request-id"]
    assert raw.parse().choices[0].message.content == "Hello from m0"


def test_the_cost_of_a_request_is_in_a_header(client):
    raw = client.chat.completions.with_raw_response.create(model="chain", messages=MESSAGES)
    # The mock reports 12 prompt and 5 completion tokens; model0 costs 1 and 2 USD per million.
    assert raw.headers["x-gateway-cost-usd"] == "0.000022"
    assert "x-gateway-usage-estimated" not in raw.headers


def test_streams_carry_no_usage_chunk_unless_asked(client):
    # The gateway asks the upstream for usage to meter the stream, and strips that chunk again.
    chunks = list(client.chat.completions.create(model="chain", messages=MESSAGES, stream=True))
    assert chunks and all(chunk.choices for chunk in chunks)
    assert all(chunk.usage is None for chunk in chunks)


def test_an_exhausted_budget_is_a_rate_limit_error_the_sdk_does_not_retry():
    broke = openai.OpenAI(base_url=BASE_URL, api_key=os.environ["GATEWAY_BROKE_KEY"], max_retries=2)
    with pytest.raises(openai.RateLimitError) as raised:
        broke.chat.completions.create(model="chain", messages=MESSAGES)
    error = raised.value
    assert error.code == "budget_exceeded"
    assert "broke-total" in error.message
    assert error.response.headers["x-should-retry"] == "false"
    # Asked once, despite max_retries=2: the data plane refused exactly one request.
    metrics = urllib.request.urlopen(BASE_URL.removesuffix("/v1") + "/metrics").read().decode()
    assert 'gateway_budget_refusals_total{budget="broke-total"} 1' in metrics, metrics


def test_streaming(client):
    stream = client.chat.completions.create(model="chain", messages=MESSAGES, stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "Hello from m0"


def test_streaming_with_include_usage(client):
    stream = client.chat.completions.create(
        model="chain", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[-1].choices == []
    assert chunks[-1].usage.total_tokens == 17


def test_tools_and_tool_choice(client):
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            },
        }
    ]
    completion = client.chat.completions.create(model="chain", messages=MESSAGES, tools=tools, tool_choice="auto")
    call = completion.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert completion.choices[0].finish_reason == "tool_calls"

    # Streaming: the SDK's chunks carry the argument deltas; assembled, they are the whole call.
    stream = client.chat.completions.create(model="chain", messages=MESSAGES, tools=tools, stream=True)
    name, arguments = None, ""
    for chunk in stream:
        for delta in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
            name = delta.function.name or name
            arguments += delta.function.arguments or ""
    assert name == "get_weather"
    assert json.loads(arguments) == {"city": "Paris"}

    none = client.chat.completions.create(model="chain", messages=MESSAGES, tools=tools, tool_choice="none")
    assert none.choices[0].message.tool_calls is None


def test_an_anthropic_backend_answers_in_the_openai_shape(client):
    completion = client.chat.completions.create(
        model="claude", messages=[{"role": "system", "content": "Be brief."}] + MESSAGES
    )
    assert completion.choices[0].message.content == "Hello from m2"
    assert completion.model == "claude-x"
    assert completion.usage.prompt_tokens == 12 and completion.usage.completion_tokens == 5
    stream = client.chat.completions.create(model="claude", messages=MESSAGES, stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "Hello from m2"


def test_an_anthropic_backends_streamed_tool_calls_assemble_in_the_sdk(client):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    stream = client.chat.completions.create(model="claude", messages=MESSAGES, tools=tools, stream=True)
    calls, finish = {}, None
    for chunk in stream:
        for delta in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
            call = calls.setdefault(delta.index, {"id": None, "name": None, "arguments": ""})
            call["id"] = delta.id or call["id"]
            call["name"] = (delta.function.name if delta.function else None) or call["name"]
            call["arguments"] += (delta.function.arguments if delta.function else None) or ""
        finish = (chunk.choices[0].finish_reason if chunk.choices else None) or finish
    assert finish == "tool_calls"
    assert list(calls) == [0]
    assert calls[0]["id"].startswith("toolu_") and calls[0]["name"] == "get_weather"
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris"}


TWO_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]},
        },
    },
]
TWO_CALLS = [
    {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})},
    {"name": "get_time", "arguments": json.dumps({"tz": "Europe/Paris"})},
]
EXPECTED_CALLS = [
    ("call_mock_1", "get_weather", {"city": "Paris"}),
    ("call_mock_2", "get_time", {"tz": "Europe/Paris"}),
]


@pytest.mark.parametrize("metadata", [{"tools": "enforce"}, None], ids=["held-and-validated", "observed"])
def test_streamed_parallel_tool_calls_are_assembled(client, metadata):
    script(0, [{"tool_calls": TWO_CALLS, "text": "Checking."}])
    extra = {"metadata": metadata} if metadata else {}
    stream = client.chat.completions.create(model="chain", messages=MESSAGES, tools=TWO_TOOLS, stream=True, **extra)
    text, finish, calls = "", None, {}
    for chunk in stream:
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
                call["id"] = delta.id or call["id"]
                if delta.function:
                    call["name"] += delta.function.name or ""
                    call["arguments"] += delta.function.arguments or ""
    assert text == "Checking."
    assert finish == "tool_calls"
    assembled = [(c["id"], c["name"], json.loads(c["arguments"])) for _, c in sorted(calls.items())]
    assert assembled == EXPECTED_CALLS


def test_the_sdk_stream_helper_assembles_held_tool_calls(client):
    script(0, [{"tool_calls": TWO_CALLS}])
    with client.chat.completions.stream(
        model="chain", messages=MESSAGES, tools=TWO_TOOLS, metadata={"tools": "enforce"}
    ) as stream:
        completion = stream.get_final_completion()
    calls = completion.choices[0].message.tool_calls
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in calls] == EXPECTED_CALLS


def test_invalid_tool_calls_raise(client):
    bad = [{"name": "get_weather", "arguments": json.dumps({"town": "Paris"})}]
    script(0, [{"tool_calls": bad}])
    with pytest.raises(openai.UnprocessableEntityError) as error:
        client.chat.completions.create(model="chain", messages=MESSAGES, tools=TWO_TOOLS, metadata={"tools": "enforce"})
    assert error.value.code == "invalid_tool_call"
    assert error.value.body["violations"][0]["pointer"] == "/city"

    script(0, [{"tool_calls": bad}])
    stream = client.chat.completions.create(
        model="chain", messages=MESSAGES, tools=TWO_TOOLS, stream=True, metadata={"tools": "enforce"}
    )
    with pytest.raises(openai.APIError) as error:
        for chunk in stream:
            assert not (chunk.choices and chunk.choices[0].delta.tool_calls), "nothing of the invalid call"
    assert "invalid tool call" in str(error.value)


def test_json_mode_passes_through(client):
    completion = client.chat.completions.create(
        model="chain", messages=MESSAGES, response_format={"type": "json_object"}
    )
    assert json.loads(completion.choices[0].message.content) == {"answer": 42}


def test_embeddings_float_and_base64(client):
    floats = client.embeddings.create(model="embeddings", input=["a", "b"], encoding_format="float")
    assert len(floats.data) == 2
    assert len(floats.data[0].embedding) == 8
    assert floats.data[1].embedding[0] == pytest.approx(0.08)
    # The SDK's default asks for base64 and decodes it to floats itself.
    decoded = client.embeddings.create(model="embeddings", input="a")
    assert decoded.data[0].embedding[:2] == pytest.approx([0.0, 0.01])
    raw = client.embeddings.create(model="embeddings", input="a", encoding_format="base64")
    assert isinstance(raw.data[0].embedding, str)


def test_models(client):
    ids = [model.id for model in client.models.list()]
    assert ids == ["chain", "claude", "embeddings", "one-model", "paced", "paint", "pinned", "refused-first", "see", "split"]
    assert client.models.retrieve("split").id == "split"
    limited = openai.OpenAI(base_url=BASE_URL, api_key=os.environ["GATEWAY_LIMITED_KEY"], max_retries=0)
    assert [model.id for model in limited.models.list()] == ["split"]


def test_401_is_authentication_error():
    with pytest.raises(openai.AuthenticationError) as error:
        openai.OpenAI(base_url=BASE_URL, api_key="gwk_wrong", max_retries=0).chat.completions.create(
            model="chain", messages=MESSAGES
        )
    assert error.value.code == "invalid_api_key"
    revoked = openai.OpenAI(base_url=BASE_URL, api_key=os.environ["GATEWAY_REVOKED_KEY"], max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        revoked.models.list()


def test_403_is_permission_denied(client):
    with pytest.raises(openai.PermissionDeniedError) as error:
        client.chat.completions.create(model="chain", messages=MESSAGES, metadata={"classification": "secret"})
    assert error.value.code == "policy_denied"
    assert "no-secrets-please" in error.value.message


def test_404_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as error:
        client.chat.completions.create(model="no-such-alias", messages=MESSAGES)
    assert error.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-alias")


def test_400_is_bad_request(client):
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model="chain", messages=[])
    assert error.value.code == "invalid_value"
    assert error.value.param == "messages"


def test_429_is_rate_limit_error(client):
    for index in range(3):
        script(index, [{"status": 429, "retry_after": "30"}])
    with pytest.raises(openai.RateLimitError) as error:
        client.chat.completions.create(model="chain", messages=MESSAGES)
    assert error.value.code == "upstream_rate_limited"
    assert error.value.response.headers["retry-after"] == "30"


def test_5xx_is_internal_server_error(client):
    for index in range(3):
        script(index, [{"status": 500}])
    with pytest.raises(openai.InternalServerError) as error:
        client.chat.completions.create(model="chain", messages=MESSAGES)
    assert error.value.status_code == 502
    assert isinstance(error.value, openai.APIStatusError)


def test_a_stream_cut_midway_raises(client):
    script(0, [{"cut_after": 2}])
    stream = client.chat.completions.create(model="chain", messages=MESSAGES, stream=True)
    with pytest.raises(openai.APIError) as error:
        for _ in stream:
            pass
    assert "before [DONE]" in str(error.value)


def test_the_sdk_retry_honours_retry_after_from_a_rate_limit():
    # The `paced` backend takes one request per wall-clock second. The gateway refuses the second request of a
    # second with 429 `rate_limit_exceeded` and `retry-after: 1`; the SDK's own retry waits that out and succeeds.
    paced = openai.OpenAI(base_url=BASE_URL, api_key=KEY, max_retries=0)
    with pytest.raises(openai.RateLimitError) as error:
        for _ in range(3):
            paced.chat.completions.create(model="paced", messages=MESSAGES)
    assert error.value.code == "rate_limit_exceeded"
    assert error.value.response.headers["retry-after"] == "1"
    assert "backend 'paced' is at its limit of 1 requests per second (RPS)" in error.value.message
    # Right after a refusal the second is usually still the same one: the retrying client is refused once, waits the
    # second out as `retry-after` says and is served. (If the second ended in between, it is served at once: again.)
    retrying = openai.OpenAI(base_url=BASE_URL, api_key=KEY, max_retries=3)
    retries = []
    for _ in range(5):
        with pytest.raises(openai.RateLimitError):
            for _ in range(3):
                paced.chat.completions.create(model="paced", messages=MESSAGES)
        raw = retrying.chat.completions.with_raw_response.create(model="paced", messages=MESSAGES)
        assert raw.parse().model == "paced-x"
        retries.append(raw.retries_taken)
        if raw.retries_taken > 0:
            break
    assert retries[-1] == 1, f"one retry, after the window: {retries}"
