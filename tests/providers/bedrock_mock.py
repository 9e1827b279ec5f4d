"""A mock of Amazon Bedrock's runtime (Converse and ConverseStream) for the gateway's contract tests.

Every request's SigV4 signature is checked with botocore (AWS's own Python implementation, independent of the
gateway's Rust signer): the request is rebuilt from the headers it signed and signed again with the keys this mock
was started with; a mismatch is answered 403 InvalidSignatureException, as Bedrock does. Answers are in Bedrock's
wire format: JSON for Converse, AWS's binary event stream (``application/vnd.amazon.eventstream``, CRC-checked
frames, written here from the format's definition) for ConverseStream.

Usage: bedrock_mock.py ACCESS_KEY_ID SECRET_ACCESS_KEY REGION [SESSION_TOKEN]; prints the port it listens on.
The model id picks the scenario: ``throttled`` (429), ``invalid`` (400), ``broken`` (500), ``stream-error`` (an
exception frame mid-stream); anything else answers (with a tool call when the request has tools).
``GET /requests`` lists what was received, each with its signature's verdict.
"""

import json
import struct
import sys
import threading
import urllib.parse
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

ACCESS_KEY, SECRET_KEY, REGION = sys.argv[1], sys.argv[2], sys.argv[3]
SESSION_TOKEN = sys.argv[4] if len(sys.argv) > 4 else None
RECEIVED = []
LOCK = threading.Lock()


def verify(method, path, headers, body):
    """None when the request's SigV4 signature is valid for this mock's keys, otherwise why not."""
    authorization = headers.get("authorization", "")
    if not authorization.startswith("AWS4-HMAC-SHA256 "):
        return "no SigV4 authorization header"
    fields = dict(part.strip().split("=", 1) for part in authorization[len("AWS4-HMAC-SHA256 "):].split(","))
    access_key, date, region, service, terminal = fields["Credential"].split("/")
    if access_key != ACCESS_KEY:
        return f"unknown access key {access_key}"
    if (region, service, terminal) != (REGION, "bedrock", "aws4_request"):
        return f"wrong scope {region}/{service}/{terminal}"
    amz_date = headers.get("x-amz-date", "")
    if not amz_date.startswith(date):
        return "x-amz-date does not match the credential scope"
    if SESSION_TOKEN is not None and headers.get("x-amz-security-token") != SESSION_TOKEN:
        return "missing or wrong x-amz-security-token"
    signed = fields["SignedHeaders"].split(";")
    if "host" not in signed or "x-amz-date" not in signed:
        return "host and x-amz-date must be signed"
    request = AWSRequest(method=method, url=f"http://{headers['host']}{path}", data=body,
                         headers={name: headers[name] for name in signed if name in headers})
    request.context["timestamp"] = amz_date
    auth = SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY, SESSION_TOKEN), "bedrock", REGION)
    canonical = auth.canonical_request(request)
    expected = auth.signature(auth.string_to_sign(request, canonical), request)
    if expected != fields["Signature"]:
        return f"signature mismatch; botocore's canonical request:\n{canonical}"
    return None


def frame(headers, payload):
    """One event-stream message: prelude (lengths and their CRC), string headers, payload, message CRC."""
    encoded = b""
    for name, value in headers.items():
        name, value = name.encode(), value.encode()
        encoded += struct.pack("B", len(name)) + name + b"\x07" + struct.pack(">H", len(value)) + value
    total = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack(">II", total, len(encoded))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    message = prelude + encoded + payload
    return message + struct.pack(">I", zlib.crc32(message))


def event(kind, body):
    body = dict(body, p="abcdefghij")  # Bedrock pads payloads with a "p" field
    return frame({":event-type": kind, ":content-type": "application/json", ":message-type": "event"},
                 json.dumps(body).encode())


def tool_name(request):
    tools = request.get("toolConfig", {}).get("tools", [])
    return tools[0]["toolSpec"]["name"] if tools else None


def converse(request):
    tool = tool_name(request)
    if tool:
        content = [{"toolUse": {"toolUseId": "tooluse_1", "name": tool, "input": {"city": "Paris"}}}]
        stop = "tool_use"
    else:
        content = [{"reasoningContent": {"reasoningText": {"text": "Thinking it over.", "signature": "c2ln"}}},
                   {"text": "Hello from Bedrock."}]
        stop = "end_turn"
    return {"output": {"message": {"role": "assistant", "content": content}}, "stopReason": stop,
            "usage": {"inputTokens": 12, "outputTokens": 5, "totalTokens": 17, "cacheReadInputTokens": 100,
                      "cacheWriteInputTokens": 0},
            "metrics": {"latencyMs": 10}}


def converse_stream(request, model):
    frames = [event("messageStart", {"role": "assistant"})]
    tool = tool_name(request)
    if tool:
        frames += [event("contentBlockStart", {"contentBlockIndex": 0,
                                               "start": {"toolUse": {"toolUseId": "tooluse_1", "name": tool}}}),
                   event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"toolUse": {"input": "{\"city\":"}}}),
                   event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"toolUse": {"input": "\"Paris\"}"}}}),
                   event("contentBlockStop", {"contentBlockIndex": 0}),
                   event("messageStop", {"stopReason": "tool_use"})]
    else:
        frames += [event("contentBlockDelta", {"contentBlockIndex": 0,
                                               "delta": {"reasoningContent": {"text": "Thinking it over."}}}),
                   event("contentBlockStop", {"contentBlockIndex": 0}),
                   event("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"text": "Hello"}})]
        if model == "stream-error":
            frames.append(frame({":message-type": "exception", ":exception-type": "throttlingException",
                                 ":content-type": "application/json"},
                                json.dumps({"message": "Too many tokens, please wait."}).encode()))
            return frames
        frames += [event("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"text": " from Bedrock."}}),
                   event("contentBlockStop", {"contentBlockIndex": 1}),
                   event("messageStop", {"stopReason": "end_turn"})]
    frames.append(event("metadata", {"usage": {"inputTokens": 12, "outputTokens": 5, "totalTokens": 17},
                                     "metrics": {"latencyMs": 10}}))
    return frames


ERRORS = {
    "throttled": (429, "ThrottlingException", "Too many requests, please wait before trying again."),
    "invalid": (400, "ValidationException", "The model returned the following errors: messages: field required"),
    "broken": (500, "InternalServerException", "The server encountered an internal error."),
}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send_json(self, status, body, error_type=None):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        if error_type:
            self.send_header("x-amzn-ErrorType", f"{error_type}:http://internal.amazon.com/coral/com.amazon.bedrock/")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/requests":
            with LOCK:
                self.send_json(200, RECEIVED)
        else:
            self.send_json(404, {"message": "not found"})

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {name.lower(): value for name, value in self.headers.items()}
        problem = verify("POST", self.path, headers, body)
        parts = self.path.split("/")
        model = urllib.parse.unquote(parts[2]) if len(parts) == 4 and parts[1] == "model" else None
        with LOCK:
            RECEIVED.append({"path": self.path, "model": model, "operation": parts[-1], "signature_error": problem,
                             "body": json.loads(body or b"null")})
        if problem:
            return self.send_json(403, {"message": "The request signature we calculated does not match the "
                                                   "signature you provided."}, "InvalidSignatureException")
        if model is None or parts[3] not in ("converse", "converse-stream"):
            return self.send_json(404, {"message": "unknown operation"}, "UnknownOperationException")
        if model in ERRORS:
            status, kind, message = ERRORS[model]
            return self.send_json(status, {"message": message}, kind)
        request = json.loads(body)
        if parts[3] == "converse":
            return self.send_json(200, converse(request))
        self.send_response(200)
        self.send_header("content-type", "application/vnd.amazon.eventstream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        data = b"".join(converse_stream(request, model))
        # Chunks that cut frames anywhere, as a network does.
        for start in range(0, len(data), 97):
            piece = data[start:start + 97]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()
