"""A scripted OpenAI-compatible chat-completions server on 127.0.0.1 for judge tests.

The judged answer inside the request selects the behaviour with a marker; the last
marker in the request wins. `@@KIND@@` applies KIND to every attempt, and `@@KINDxN@@`
to the first N attempts of that request, after which the reply is `Score: 64`:

- `429`: HTTP 429 with `Retry-After: 0.01`; `429nr`: HTTP 429 without Retry-After
- `503`: HTTP 503 with `retry-after-ms: 10`; `500`: HTTP 500 without a retry header
- `reset`: the connection is reset (TCP RST) before any response
- `timeout`: the reply comes after `hang_seconds`, beyond the client timeout
- `badjson`: a body that is not JSON; `nochoices`: a completion without `choices`;
  `emptychoices`: `choices: []`; `nullcontent`: a message whose content is null
- `refuse`: the reply is text without a score
- `echoauth`: HTTP 401 quoting the request's Authorization header
- `score=NN`: the reply is NN
- `reply=NAME`: the reply is the text stored under NAME in `ChatServer.replies`
- `quote=NN`: the reply quotes the whole request, then ends with `Score: NN`

Without a marker the reply is `Score: 61`.
"""

import json
import re
import socket
import struct
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

MARKER = re.compile(r"@@([a-z0-9=]+?)(?:x(\d+))?@@")
RECOVERED_REPLY = "Score: 64"
DEFAULT_REPLY = "Score: 61"


class ChatServer:
    def __init__(self):
        self.requests = []
        self.attempts = Counter()
        self.lock = threading.Lock()
        self.delay = 0.0
        self.in_flight = 0
        self.max_in_flight = 0
        self.hang_seconds = 3.0
        self.replies = {}
        handler = type("Handler", (ChatHandler,), {"server_state": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def requests_for(self, marker):
        return [r for r in self.requests if f"@@{marker}@@" in r["content"]]

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class ChatHandler(BaseHTTPRequestHandler):
    server_state: ChatServer

    def log_message(self, *args):
        pass

    def do_POST(self):
        state = self.server_state
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        content = body["messages"][-1]["content"]
        markers = MARKER.findall(content)
        kind, times = markers[-1] if markers else ("", "")
        with state.lock:
            state.requests.append(
                {
                    "content": content,
                    "body": body,
                    "headers": {key.lower(): value for key, value in self.headers.items()},
                }
            )
            state.attempts[content] += 1
            attempt = state.attempts[content]
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            if state.delay:
                time.sleep(state.delay)
            if times and attempt > int(times):
                self.send_json(200, completion(RECOVERED_REPLY))
            else:
                self.respond(kind, content)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            with state.lock:
                state.in_flight -= 1

    def respond(self, kind, content):
        if kind == "429":
            return self.send_json(
                429, {"error": {"message": "rate limited"}}, {"Retry-After": "0.01"}
            )
        if kind == "429nr":
            return self.send_json(429, {"error": {"message": "rate limited"}})
        if kind == "503":
            return self.send_json(
                503, {"error": {"message": "overloaded"}}, {"retry-after-ms": "10"}
            )
        if kind == "500":
            return self.send_json(500, {"error": {"message": "internal error"}})
        if kind == "reset":
            return self.reset_connection()
        if kind == "timeout":
            time.sleep(self.server_state.hang_seconds)
            return self.send_json(200, completion("Score: 50"))
        if kind == "badjson":
            return self.send_raw(200, b"{not json", "application/json")
        if kind == "nochoices":
            return self.send_json(200, {"id": "x", "object": "chat.completion"})
        if kind == "emptychoices":
            return self.send_json(200, {**completion(None), "choices": []})
        if kind == "nullcontent":
            return self.send_json(200, completion(None))
        if kind == "echoauth":
            message = f"invalid credentials: {self.headers.get('authorization')}"
            return self.send_json(401, {"error": {"message": message}})
        if kind == "refuse":
            return self.send_json(200, completion("I cannot rate this answer."))
        if kind.startswith("quote="):
            verdict = kind.split("=", 1)[1]
            reply = f"The request reads:\n{content}\nMy own verdict. Score: {verdict}"
            return self.send_json(200, completion(reply))
        if kind.startswith("reply="):
            return self.send_json(200, completion(self.server_state.replies[kind.split("=", 1)[1]]))
        if kind.startswith("score="):
            return self.send_json(200, completion(kind.split("=", 1)[1]))
        return self.send_json(200, completion(DEFAULT_REPLY))

    def reset_connection(self):
        # SO_LINGER with a zero timeout makes close() send a TCP RST instead of a FIN.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def send_json(self, status, payload, headers=None):
        self.send_raw(status, json.dumps(payload).encode(), "application/json", headers)

    def send_raw(self, status, data, content_type, headers=None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)


def completion(text):
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": "judge-test",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 100, "completion_tokens": 3, "total_tokens": 103},
    }


@pytest.fixture
def chat_server():
    server = ChatServer().start()
    yield server
    server.stop()


@pytest.fixture
def api_key(monkeypatch):
    key = "sk-dnpo-test-4f9c2b7e1a"
    monkeypatch.setenv("DNPO_TEST_JUDGE_KEY", key)
    return key
