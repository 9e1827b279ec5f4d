// Smoke suite of the official `openai` Node SDK against the gateway, unchanged but for base URL and key: chat,
// streaming, tools, embeddings, errors. Run by the pipeline test `proxy::the_official_node_sdk_works_unchanged`
// (tests/tests/pipeline/proxy.rs), which passes GATEWAY_BASE_URL, GATEWAY_KEY and GATEWAY_BROKE_KEY; scripts/test.sh
// installs the SDK with `npm ci`.
import assert from "node:assert/strict";
import { test } from "node:test";

import OpenAI from "openai";

const baseURL = process.env.GATEWAY_BASE_URL;
const client = new OpenAI({ baseURL, apiKey: process.env.GATEWAY_KEY, maxRetries: 0 });
const messages = [{ role: "user", content: "hi" }];
const weather = {
  type: "function",
  function: {
    name: "get_weather",
    parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
  },
};

test("chat", async () => {
  const completion = await client.chat.completions.create({ model: "chain", messages });
  assert.equal(completion.choices[0].message.content, "Hello from m0");
  assert.equal(completion.usage.total_tokens, 17);
});

test("streaming", async () => {
  const stream = await client.chat.completions.create({ model: "chain", messages, stream: true });
  let text = "";
  for await (const chunk of stream) {
    text += chunk.choices[0]?.delta?.content ?? "";
  }
  assert.equal(text, "Hello from m0");
});

test("tools", async () => {
  const completion = await client.chat.completions.create({ model: "chain", messages, tools: [weather] });
  const call = completion.choices[0].message.tool_calls[0];
  assert.equal(completion.choices[0].finish_reason, "tool_calls");
  assert.equal(call.function.name, "get_weather");
  assert.deepEqual(JSON.parse(call.function.arguments), { city: "Paris" });
});

test("streamed tool calls", async () => {
  const stream = await client.chat.completions.create({ model: "chain", messages, tools: [weather], stream: true });
  let name = "";
  let args = "";
  for await (const chunk of stream) {
    for (const call of chunk.choices[0]?.delta?.tool_calls ?? []) {
      name += call.function?.name ?? "";
      args += call.function?.arguments ?? "";
    }
  }
  assert.equal(name, "get_weather");
  assert.deepEqual(JSON.parse(args), { city: "Paris" });
});

test("embeddings", async () => {
  const answer = await client.embeddings.create({ model: "embeddings", input: "hi" });
  assert.equal(answer.data[0].embedding.length, 8);
});

test("a bad key is an authentication error", async () => {
  const stranger = new OpenAI({ baseURL, apiKey: "gwk_wrong", maxRetries: 0 });
  await assert.rejects(stranger.chat.completions.create({ model: "chain", messages }), (error) => {
    assert.ok(error instanceof OpenAI.AuthenticationError);
    assert.equal(error.code, "invalid_api_key");
    return true;
  });
});

test("an unknown model is not found", async () => {
  await assert.rejects(client.chat.completions.create({ model: "no-such-alias", messages }), (error) => {
    assert.ok(error instanceof OpenAI.NotFoundError);
    assert.equal(error.code, "model_not_found");
    return true;
  });
});

test("an exhausted budget is a rate limit error", async () => {
  const broke = new OpenAI({ baseURL, apiKey: process.env.GATEWAY_BROKE_KEY, maxRetries: 0 });
  await assert.rejects(broke.chat.completions.create({ model: "chain", messages }), (error) => {
    assert.ok(error instanceof OpenAI.RateLimitError);
    assert.equal(error.code, "budget_exceeded");
    return true;
  });
});
