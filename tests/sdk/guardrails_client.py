"""A caller of the gateway with the official `openai` SDK, for the guardrails end-to-end test
(`tests/tests/e2e/guardrails.rs`). Not a pytest module: `python guardrails_client.py BASE_URL KEY MODE CASE PROMPT`
prints one JSON object with what the caller saw (`content`; `arguments`, the streamed tool call's assembled arguments, in
mode `stream_tool`; or the error's `status`, `code` and `message`)."""

import json
import sys

import openai


def main() -> None:
    base_url, key, mode, case, prompt = sys.argv[1:6]
    client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)
    headers = {"x-gateway-meta-case": case, "x-request-id": f"guardrails-{case}"}
    messages = [{"role": "user", "content": prompt}]
    try:
        if mode == "stream_tool":
            stream = client.chat.completions.create(
                model="chat", messages=messages, stream=True, extra_headers=headers
            )
            arguments = ""
            for chunk in stream:
                for choice in chunk.choices or []:
                    for call in (choice.delta.tool_calls or []) if choice.delta else []:
                        if call.function and call.function.arguments:
                            arguments += call.function.arguments
            print(json.dumps({"arguments": arguments}))
            return
        if mode == "stream":
            stream = client.chat.completions.create(
                model="chat", messages=messages, stream=True, extra_headers=headers
            )
            content = "".join(
                chunk.choices[0].delta.content or ""
                for chunk in stream
                if chunk.choices and chunk.choices[0].delta
            )
        else:
            answer = client.chat.completions.create(model="chat", messages=messages, extra_headers=headers)
            content = answer.choices[0].message.content
        print(json.dumps({"content": content}))
    except openai.APIError as error:
        body = error.body if isinstance(error.body, dict) else {}
        print(
            json.dumps(
                {
                    "status": getattr(error, "status_code", None),
                    "code": body.get("code") or getattr(error, "code", None),
                    "message": str(error),
                }
            )
        )


if __name__ == "__main__":
    main()
