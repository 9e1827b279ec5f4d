"""A mock of Google's generateContent APIs (Vertex AI and the Gemini API) and of Google's OAuth token endpoint, for
the gateway's contract tests.

At start it makes a throwaway RSA service account key and prints two lines: the port it listens on, then the service
account's key file as JSON (``token_uri`` pointing at this mock). ``POST /token`` checks the JWT-bearer grant as
Google does, with PyJWT and ``cryptography`` (independent of the gateway's Rust signer): RS256 signature by that key,
``kid``, ``iss``, ``aud`` (this endpoint), ``scope``, ``iat``/``exp`` (an hour at most); a valid one is answered with
a fresh access token, anything else 400 ``invalid_grant``. Vertex calls
(``/v1/projects/{p}/locations/{l}/publishers/google/models/{model}:{method}``) must carry one of the tokens issued
(else 401 UNAUTHENTICATED); Gemini API calls (``/v1beta/models/{model}:{method}``) the API key given on the command
line in ``x-goog-api-key`` (else 400 API_KEY_INVALID, as Google answers).

Usage: google_mock.py API_KEY [TOKEN_EXPIRES_IN]. The model picks the scenario: ``throttled`` (429),
``broken`` (500), ``invalid`` (400), ``blocked`` (a prompt blocked by safety), ``filtered`` (an answer stopped by
safety); anything else answers with a thought and text, or a function call when the request declares tools and
does not answer one yet. ``batchEmbedContents`` and ``predict`` answer 3-dimensional embeddings (``predict``
with a token count per instance: its words). ``GET /requests`` lists the model calls received, ``GET /tokens`` the token requests.
"""

import json
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

API_KEY = sys.argv[1]
EXPIRES_IN = int(sys.argv[2]) if len(sys.argv) > 2 else 3600
CLIENT_EMAIL = "gateway-test@contract-project.iam.gserviceaccount.com"
KEY_ID = "throwaway-key-1"
SCOPE = "https://www.googleapis.com/auth/cloud-platform"

PRIVATE_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PUBLIC_KEY = PRIVATE_KEY.public_key()
RECEIVED = []
TOKEN_REQUESTS = []
ISSUED = set()
LOCK = threading.Lock()


def verify_grant(form, token_url):
    """None when the form is a valid JWT-bearer grant for this mock's service account, otherwise why not."""
    if form.get("grant_type") != ["urn:ietf:params:oauth:grant-type:jwt-bearer"]:
        return f"wrong grant_type {form.get('grant_type')}"
    assertion = (form.get("assertion") or [""])[0]
    try:
        header = jwt.get_unverified_header(assertion)
        claims = jwt.decode(assertion, PUBLIC_KEY, algorithms=["RS256"], audience=token_url, issuer=CLIENT_EMAIL,
                            options={"require": ["iss", "aud", "iat", "exp", "scope"]})
    except jwt.PyJWTError as error:
        return f"assertion rejected by PyJWT: {error!r}"
    if header.get("kid") != KEY_ID:
        return f"wrong kid {header.get('kid')}"
    if SCOPE not in claims["scope"].split():
        return f"scope {claims['scope']} lacks cloud-platform"
    if not 0 < claims["exp"] - claims["iat"] <= 3600:
        return "exp must be within an hour of iat"
    if abs(claims["iat"] - time.time()) > 300:
        return "iat is not now"
    return None


def google_error(code, status, message):
    return code, {"error": {"code": code, "message": message, "status": status}}


def answer(model, request):
    """The status and GenerateContentResponse for a request to `model`."""
    if model == "throttled":
        return google_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded for aiplatform.googleapis.com.")
    if model == "broken":
        return google_error(500, "INTERNAL", "Internal error encountered.")
    if model == "invalid":
        return google_error(400, "INVALID_ARGUMENT", "Request contains an invalid argument.")
    usage = {"promptTokenCount": 20, "candidatesTokenCount": 6, "thoughtsTokenCount": 4, "totalTokenCount": 30}
    if model == "blocked":
        return 200, {"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": []},
                     "usageMetadata": {"promptTokenCount": 20, "totalTokenCount": 20}}
    if model == "filtered":
        return 200, {"candidates": [{"content": {"role": "model", "parts": [{"text": "I can"}]},
                                     "finishReason": "SAFETY"}], "usageMetadata": usage}
    contents = request.get("contents", [])
    answered = any("functionResponse" in part for part in contents[-1].get("parts", [])) if contents else False
    if request.get("tools") and not answered:
        name = request["tools"][0]["functionDeclarations"][0]["name"]
        parts = [{"functionCall": {"name": name, "args": {"city": "Paris"}}}]
    else:
        parts = [{"text": "Considering the question.", "thought": True}, {"text": "Hello from Gemini."}]
    return 200, {"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
                 "usageMetadata": usage, "modelVersion": model, "responseId": "mock-response-1"}


def stream_events(status_body):
    """The SSE events of a streamed answer: the parts one event each, the finish and usage on the last."""
    _, body = status_body
    if "candidates" not in body:
        return [body]
    candidate = body["candidates"][0]
    parts = candidate["content"]["parts"]
    pieces = []
    for part in parts:
        if "text" in part and not part.get("thought") and len(part["text"]) > 6:
            pieces += [dict(part, text=part["text"][:6]), dict(part, text=part["text"][6:])]
        else:
            pieces.append(part)
    events = [{"candidates": [{"content": {"role": "model", "parts": [piece]}, "index": 0}],
               "modelVersion": body.get("modelVersion", "")} for piece in pieces]
    events[-1]["candidates"][0]["finishReason"] = candidate["finishReason"]
    events[-1]["usageMetadata"] = body["usageMetadata"]
    return events


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body, content_type="application/json"):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        with LOCK:
            listing = {"/requests": RECEIVED, "/tokens": TOKEN_REQUESTS}.get(self.path)
            data = json.dumps(listing).encode() if listing is not None else None
        if data is None:
            self.reply(404, {"error": "not found"})
        else:
            self.reply(200, data)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        path, _, query = self.path.partition("?")
        if path == "/token":
            return self.token(body)
        headers = {name.lower(): value for name, value in self.headers.items()}
        if path.startswith("/v1/projects/"):
            kind = "vertex"
            # /v1/projects/{p}/locations/{l}/publishers/google/models/{model}:{method}
            segments = path.split("/")
            project, location = segments[3], segments[5]
            authorization = headers.get("authorization", "")
            token = authorization[len("Bearer "):] if authorization.startswith("Bearer ") else None
            with LOCK:
                auth_error = None if token in ISSUED else f"unknown bearer token {token!r}"
        elif path.startswith("/v1beta/models/"):
            kind, project, location = "gemini", None, None
            auth_error = None if headers.get("x-goog-api-key") == API_KEY else "wrong or missing x-goog-api-key"
        else:
            return self.reply(404, google_error(404, "NOT_FOUND", f"no such path {path}")[1])
        model, _, method = urllib.parse.unquote(path.rsplit("/", 1)[1]).partition(":")
        request = json.loads(body or b"{}")
        with LOCK:
            RECEIVED.append({"kind": kind, "path": self.path, "project": project, "location": location,
                             "model": model, "method": method, "query": query, "auth_error": auth_error,
                             "body": request})
        if auth_error and kind == "vertex":
            return self.reply(401, google_error(401, "UNAUTHENTICATED", auth_error)[1])
        if auth_error:
            return self.reply(400, google_error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid "
                                                                        "API key.")[1])
        if method == "batchEmbedContents":
            vectors = [{"values": [0.1 * len(r["content"]["parts"][0]["text"]), 0.2, 0.3]} for r in request["requests"]]
            return self.reply(200, {"embeddings": vectors})
        if method == "predict":
            predictions = [{"embeddings": {"values": [0.5, 0.25, 0.125],
                                           "statistics": {"token_count": len(i["content"].split()), "truncated": False}}}
                           for i in request["instances"]]
            return self.reply(200, {"predictions": predictions})
        status, reply = answer(model, request)
        if method == "streamGenerateContent" and status == 200:
            if query != "alt=sse":
                return self.reply(400, google_error(400, "INVALID_ARGUMENT", "the mock streams SSE only")[1])
            events = b"".join(b"data: " + json.dumps(e).encode() + b"\r\n\r\n" for e in stream_events((status, reply)))
            return self.reply(200, events, "text/event-stream")
        self.reply(status, reply)

    def token(self, body):
        form = urllib.parse.parse_qs(body.decode())
        host = self.headers.get("host")
        error = verify_grant(form, f"http://{host}/token")
        with LOCK:
            TOKEN_REQUESTS.append({"error": error})
            number = len(TOKEN_REQUESTS)
            if error is None:
                token = f"ya29.mock-token-{number}"
                ISSUED.add(token)
        if error is not None:
            return self.reply(400, {"error": "invalid_grant", "error_description": error})
        self.reply(200, {"access_token": token, "expires_in": EXPIRES_IN, "token_type": "Bearer"})


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    pem = PRIVATE_KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
    key_file = {"type": "service_account", "project_id": "contract-project", "private_key_id": KEY_ID,
                "private_key": pem, "client_email": CLIENT_EMAIL, "client_id": "1",
                "token_uri": f"http://127.0.0.1:{port}/token"}
    print(port, flush=True)
    print(json.dumps(key_file), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
