"""A scripted OpenAI-compatible chat-completions server on 127.0.0.1 for judge tests.

The judged answer inside the request selects the behaviour with a marker:
`@@score=NN@@` replies NN; `@@429x2@@` answers 429 twice, then a score;
`@@503x3@@` answers 503 three times, then a score; `@@timeout@@` never answers in time;
`@@badjson@@`, `@@nochoices@@` and `@@nullcontent@@` send malformed bodies;
`@@refuse@@` replies with a refusal; `@@echoauth@@` returns 401 quoting the
Authorization header. Without a marker the reply is `Score: 61`.
"""

import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

MARKER = re.compile(r"@@([a-z0-9=]+)@@")


class ChatServer:
    def __init__(self):
        self.requests = []
        self.attempts = Counter()
        self.lock = threading.Lock()
        self.delay = 0.0
        self.in_flight = 0
        self.max_in_flight = 0
        self.hang_seconds = 3.0
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


class ChatHandler(BaseHTTPRequestHandler):
    server_state: ChatServer

    def log_message(self, *args):
        pass

    def do_POST(self):
        state = self.server_state
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        content = body["messages"][-1]["content"]
        markers = MARKER.findall(content)
        marker = markers[-1] if markers else ""
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
            self.respond(marker, attempt)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            with state.lock:
                state.in_flight -= 1

    def respond(self, marker, attempt):
        if marker == "429x2" and attempt <= 2:
            return self.send_json(
                429, {"error": {"message": "rate limited"}}, {"Retry-After": "0.01"}
            )
        if marker == "503x3" and attempt <= 3:
            return self.send_json(
                503, {"error": {"message": "overloaded"}}, {"retry-after-ms": "10"}
            )
        if marker == "timeout":
            time.sleep(self.server_state.hang_seconds)
            return self.send_json(200, completion("Score: 50"))
        if marker == "badjson":
            return self.send_raw(200, b"{not json", "application/json")
        if marker == "nochoices":
            return self.send_json(200, {"id": "x", "object": "chat.completion"})
        if marker == "nullcontent":
            return self.send_json(200, completion(None))
        if marker == "echoauth":
            message = f"invalid credentials: {self.headers.get('authorization')}"
            return self.send_json(401, {"error": {"message": message}})
        if marker == "refuse":
            return self.send_json(200, completion("I cannot rate this answer."))
        if marker.startswith("score="):
            return self.send_json(200, completion(marker.split("=", 1)[1]))
        if marker in ("429x2", "503x3"):
            return self.send_json(200, completion("Score: 64"))
        return self.send_json(200, completion("Score: 61"))

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
    server = ChatServer()
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


@pytest.fixture
def api_key(monkeypatch):
    key = "sk-dnpo-test-4f9c2b7e1a"
    monkeypatch.setenv("DNPO_TEST_JUDGE_KEY", key)
    return key
