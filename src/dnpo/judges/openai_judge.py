"""Judge through any OpenAI-compatible chat-completions server (OpenAI, vLLM serve,
llama.cpp server, Ollama) with the official `openai` client.

Requests use temperature 0 and run `judge.max_concurrency` at a time in a thread pool.
The client retries 408, 409, 429, 5xx, connection errors and timeouts up to
`judge.max_retries` times with exponential backoff, and waits as long as a
`Retry-After` header asks (openai-python's retry policy). The API key is read from the
environment variable named by `judge.api_key_env`; it is never logged, and it is cut
out of every error message before the message is logged or stored.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import openai

from dnpo.configbase import ConfigError
from dnpo.judges.base import (
    Judge,
    JudgeResult,
    Prompt,
    check_lengths,
    render_judge_prompt,
    template_hash,
)
from dnpo.judges.config import JudgeConfig
from dnpo.judges.parsing import PARSER_VERSION, parse_verdict

logger = logging.getLogger(__name__)

# Local servers (vLLM, llama.cpp, Ollama) accept any key; the client requires one.
PLACEHOLDER_KEY = "EMPTY"
MAX_LOGGED_FAILURES = 20
# Names of API-key variables already warned about as unset in this process.
_WARNED_KEY_VARIABLES: set[str] = set()


def read_api_key(config: JudgeConfig) -> str:
    """Return the key from `config.api_key_env`, or a placeholder when base_url is set.

    Local servers often need no key. For any other base URL an unset variable is
    logged as a warning, once per variable and process.
    """
    key = os.environ.get(config.api_key_env, "")
    if key:
        return key
    if config.base_url:
        if is_local_url(config.base_url):
            logger.info(
                "%s is not set; sending a placeholder API key to the local server %s",
                config.api_key_env,
                config.base_url,
            )
        elif config.api_key_env not in _WARNED_KEY_VARIABLES:
            _WARNED_KEY_VARIABLES.add(config.api_key_env)
            logger.warning(
                "Environment variable %s is not set; sending a placeholder API key to %s, "
                "which rejects it unless the server needs no key. Export the key in %s or "
                "name another variable with judge.api_key_env.",
                config.api_key_env,
                config.base_url,
                config.api_key_env,
            )
        return PLACEHOLDER_KEY
    raise ConfigError(
        f"environment variable {config.api_key_env} is not set; export the API key in it, name "
        "another variable with judge.api_key_env, or set judge.base_url to a local server"
    )


def is_local_url(url: str) -> bool:
    """Return whether `url` points at this machine: localhost or a loopback IP address."""
    host = urlsplit(url if "://" in url else f"//{url}").hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class OpenAIJudge(Judge):
    """Chat-completions judge; each item is one request with the rendered template."""

    type = "openai"

    def __init__(self, config: JudgeConfig, template: str) -> None:
        if not config.model:
            raise ConfigError("judge.model is empty; set the served model name, e.g. gpt-4o-mini")
        self.config = config
        self.template = template
        self._secret = read_api_key(config)
        self._local = threading.local()
        self._failures = 0
        self._failures_lock = threading.Lock()
        http_client = openai.DefaultHttpxClient(event_hooks={"request": [self._count_request]})
        self.client = openai.OpenAI(
            api_key=self._secret,
            base_url=config.base_url or None,
            timeout=config.timeout,
            max_retries=config.max_retries,
            http_client=http_client,
        )

    @property
    def identity(self) -> str:
        server = self.config.base_url or "api.openai.com"
        template = template_hash(self.template)
        return f"openai:{server}:{self.config.model}:{template}:parse{PARSER_VERSION}"

    def _count_request(self, request: Any) -> None:
        # Runs in the thread that sends the request, once per attempt.
        self._local.attempts = getattr(self._local, "attempts", 0) + 1

    def score(
        self,
        prompts: list[Prompt],
        responses: list[str],
        gold_answers: list[str | None] | None = None,
    ) -> list[JudgeResult]:
        check_lengths(prompts, responses, gold_answers)
        workers = min(self.config.max_concurrency, max(1, len(prompts)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="judge") as pool:
            return list(pool.map(self.score_one, prompts, responses))

    def score_one(self, prompt: Prompt, response: str) -> JudgeResult:
        """Send one request; a failure becomes a result with `error`, never an exception."""
        content = render_judge_prompt(self.template, prompt, response)
        self._local.attempts = 0
        started = time.monotonic()
        completion, error = None, None
        try:
            completion = self.client.chat.completions.create(
                model=self.config.model,
                messages=[{"role": "user", "content": content}],
                temperature=0,
                max_tokens=self.config.max_new_tokens,
            )
        except openai.APITimeoutError:
            error = f"timeout: no response within {self.config.timeout} s"
        except openai.APIConnectionError as exc:
            error = f"connection: {exc}"
        except openai.APIStatusError as exc:
            error = f"api: HTTP {exc.status_code}: {exc.message}"
        except (openai.OpenAIError, ValueError) as exc:
            error = f"malformed: {type(exc).__name__}: {exc}"
        latency = time.monotonic() - started
        retries = max(0, self._local.attempts - 1)
        if error is None:
            result = self._read_completion(completion)
        else:
            result = JudgeResult(None, "", error)
        result.latency_s, result.retries = latency, retries
        if result.error is not None:
            result.error = self.redact(result.error)
            result.raw = self.redact(result.raw)
            self._log_failure(result.error, retries)
        return result

    def _read_completion(self, completion: Any) -> JudgeResult:
        """Parse a chat completion; a body without a message text is `malformed`."""
        try:
            text = completion.choices[0].message.content
        except (AttributeError, IndexError, KeyError, TypeError):
            return JudgeResult(None, "", "malformed: the response has no choices[0].message")
        if not isinstance(text, str):
            return JudgeResult(None, "", "malformed: the response message has no text content")
        parsed = parse_verdict(text)
        result = JudgeResult(parsed.score, text, parsed.error)
        usage = getattr(completion, "usage", None)
        result.prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        result.completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        return result

    def redact(self, text: str) -> str:
        if self._secret and self._secret != PLACEHOLDER_KEY:
            return text.replace(self._secret, "[API key]")
        return text

    def _log_failure(self, error: str, retries: int) -> None:
        with self._failures_lock:
            self._failures += 1
            count = self._failures
        if count <= MAX_LOGGED_FAILURES:
            logger.warning("Judge request failed after %d retries: %s", retries, error)
        elif count == MAX_LOGGED_FAILURES + 1:
            logger.warning("More judge requests failed; the judge statistics count them all")

    def close(self) -> None:
        self.client.close()
