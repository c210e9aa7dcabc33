"""A small client for OpenAI-compatible chat endpoints that accept images (vLLM,
OpenRouter, OpenAI): ``POST {base_url}/chat/completions`` with ``image_url`` parts
holding PNG data URLs.

- Retries with exponential backoff (honouring ``Retry-After``) on HTTP 429, 5xx,
  timeouts and dropped connections; a reply the caller cannot use (no ``choices``, bad
  JSON, or refused by the caller's ``parse``) is retried too, then reported.
- A refused key (HTTP 401/403) stops at once with one line naming the key's variable.
- Rate limiting: at most ``requests_per_minute`` requests are started per minute.
- A cache on disk keyed by the request (URL, model, messages, parameters; never the
  key): a rerun reads it and sends nothing. Only replies that ``parse`` accepted are
  cached, so a malformed reply is never stored.

Standard library only (urllib); no request leaves the machine unless a base URL says so.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import random
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from diffdict.errors import DiffdictError
from diffdict.io import atomic_write_text


class MalformedReply(ValueError):
    """The endpoint answered, but not with something usable."""


def png_data_url(image: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def user_message(text: str, images: list[np.ndarray]) -> dict:
    content: list[dict] = [{"type": "text", "text": text}]
    content += [{"type": "image_url", "image_url": {"url": png_data_url(im)}} for im in images]
    return {"role": "user", "content": content}


@dataclass
class VlmConfig:
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    api_key_env: str = "OPENAI_API_KEY"
    cache_dir: str | None = None
    timeout: float = 60.0
    max_retries: int = 5
    backoff: float = 1.0  # seconds; doubled each retry (with jitter), capped at max_backoff
    max_backoff: float = 60.0
    requests_per_minute: float = 60.0
    temperature: float = 0.0
    max_tokens: int = 64


class VlmClient:
    def __init__(self, config: VlmConfig | None = None, sleep: Callable[[float], None] = time.sleep):
        self.config = config or VlmConfig()
        if not self.config.base_url.startswith(("http://", "https://")):
            raise DiffdictError(f"VLM base URL {self.config.base_url!r} must start with http:// or https://")
        self.url = self.config.base_url.rstrip("/") + "/chat/completions"
        self._sleep = sleep
        self._lock = threading.Lock()
        self._last_start = 0.0
        self.requests_sent = 0
        self.cache_hits = 0

    # -- cache -------------------------------------------------------------------------
    def request_key(self, body: dict) -> str:
        blob = json.dumps({"url": self.url, "body": body}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def _cache_path(self, key: str) -> Path | None:
        if not self.config.cache_dir:
            return None
        return Path(self.config.cache_dir) / key[:2] / f"{key}.json"

    # -- requests ----------------------------------------------------------------------
    def _wait_rate(self) -> None:
        rpm = self.config.requests_per_minute
        if not rpm or rpm <= 0:
            return
        with self._lock:
            gap = 60.0 / rpm - (time.monotonic() - self._last_start)
            if gap > 0:
                self._sleep(gap)
            self._last_start = time.monotonic()

    def _post(self, body: dict) -> tuple[int, dict | None, str, dict]:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.config.api_key_env, "")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        self._wait_rate()
        self.requests_sent += 1
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout) as response:
                raw = response.read().decode("utf-8", "replace")
                status, response_headers = response.status, dict(response.headers)
        except urllib.error.HTTPError as error:
            raw = error.read().decode("utf-8", "replace") if error.fp else ""
            return error.code, None, raw, dict(error.headers or {})
        try:
            return status, json.loads(raw), raw, response_headers
        except json.JSONDecodeError:
            return status, None, raw, response_headers

    def _excerpt(self, raw: str) -> str:
        """The start of an error body, fit for a message: the API key and credentials redacted."""
        return _excerpt(raw, os.environ.get(self.config.api_key_env, ""))

    def _delay(self, attempt: int, headers: dict) -> float:
        retry_after = headers.get("Retry-After") or headers.get("retry-after")
        if retry_after:
            try:
                return min(float(retry_after), self.config.max_backoff)
            except ValueError:
                pass
        base = self.config.backoff * (2 ** attempt)
        return min(base * (1 + 0.25 * random.random()), self.config.max_backoff)

    def chat(self, messages: list[dict], parse: Callable[[str], Any] = lambda text: text, **params) -> Any:
        """Send a chat request (or read its cached reply) and return ``parse(reply text)``.

        ``parse`` raises :class:`MalformedReply` (or ValueError) for a reply it cannot
        use: the request is retried, and after ``max_retries`` a DiffdictError names the
        endpoint and what came back. Nothing is cached unless ``parse`` accepted it.
        """
        body = {"model": self.config.model, "messages": messages, "temperature": self.config.temperature,
                "max_tokens": self.config.max_tokens, **params}
        key = self.request_key(body)
        path = self._cache_path(key)
        if path is not None and path.exists():
            try:
                text = json.loads(path.read_text())["reply"]
                value = parse(text)
                self.cache_hits += 1
                return value
            except (ValueError, KeyError, OSError):
                pass  # a damaged or unusable cache entry: ask again
        last_problem = "no attempt made"
        for attempt in range(self.config.max_retries + 1):
            try:
                status, payload, raw, headers = self._post(body)
            except (socket.timeout, TimeoutError) as error:
                last_problem, headers = f"timed out after {self.config.timeout:g} s ({error})", {}
            except urllib.error.URLError as error:
                reason = error.reason
                if isinstance(reason, (socket.timeout, TimeoutError)):
                    last_problem = f"timed out after {self.config.timeout:g} s"
                else:
                    last_problem = f"connection failed: {reason}"
                headers = {}
            except (ConnectionError, OSError) as error:
                last_problem, headers = f"connection failed: {error}", {}
            else:
                if status in (401, 403):
                    where = (f"${self.config.api_key_env} is set" if os.environ.get(self.config.api_key_env)
                             else f"${self.config.api_key_env} is not set")
                    raise DiffdictError(
                        f"the VLM endpoint {self.url} refused the API key (HTTP {status}; {where}): "
                        f"{self._excerpt(raw)}"
                    )
                if status == 429 or status >= 500:
                    last_problem = f"HTTP {status}: {self._excerpt(raw)}"
                elif status >= 400:
                    raise DiffdictError(f"the VLM endpoint {self.url} rejected the request (HTTP {status}): {self._excerpt(raw)}")
                else:
                    try:
                        text = _reply_text(payload, raw)
                        value = parse(text)
                    except (MalformedReply, ValueError, TypeError) as error:
                        last_problem = f"malformed reply ({error}): {self._excerpt(raw)}"
                    else:
                        if path is not None:
                            atomic_write_text(path, json.dumps({"reply": text, "model": self.config.model}) + "\n")
                        return value
            if attempt < self.config.max_retries:
                self._sleep(self._delay(attempt, headers))
        raise DiffdictError(
            f"the VLM endpoint {self.url} gave no usable reply after {self.config.max_retries + 1} attempts: {last_problem}"
        )


# credentials an endpoint may echo back in an error body (some echo the request headers)
_CREDENTIAL_PATTERNS = [
    re.compile(r"(?i)\b(bearer|basic|token)(\s+)[A-Za-z0-9._~+/=:-]{6,}"),
    re.compile(r"(?i)([\"']?(?:api[_-]?key|x-api-key|authorization|access[_-]?token|secret|password)[\"']?"
               r"\s*[:=]\s*[\"']?)(?:(?:bearer|basic|token)\s+)?([^\"'\s,;}&]+)"),
    re.compile(r"\b(sk|pk|rk)-[A-Za-z0-9_-]{8,}"),
]


def redact(text: str, secret: str = "") -> str:
    """``text`` with ``secret`` and anything that looks like a credential replaced by [redacted]."""
    if secret:
        text = text.replace(secret, "[redacted]")
    text = _CREDENTIAL_PATTERNS[0].sub(lambda m: f"{m.group(1)}{m.group(2)}[redacted]", text)
    text = _CREDENTIAL_PATTERNS[1].sub(lambda m: f"{m.group(1)}[redacted]", text)
    return _CREDENTIAL_PATTERNS[2].sub("[redacted]", text)


def _excerpt(raw: str, secret: str = "", limit: int = 160) -> str:
    # redact before cutting, so no prefix of a credential survives the cut
    text = " ".join(redact(raw or "", secret).split())
    return (text[: limit - 3] + "...") if len(text) > limit else (text or "(empty body)")


def _reply_text(payload: Any, raw: str) -> str:
    if not isinstance(payload, dict):
        raise MalformedReply("not a JSON object")
    try:
        content = payload["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise MalformedReply("no choices[0].message.content") from None
    if isinstance(content, list):  # some servers return content parts
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    if not isinstance(content, str) or not content.strip():
        raise MalformedReply("empty message content")
    return content.strip()


def parse_explanation(text: str) -> str:
    """One short line: the first non-empty line, quotes and a trailing period removed."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    line = line.strip().strip("\"'`").rstrip(".").strip()
    if line.lower().startswith(("explanation:", "concept:")):
        line = line.split(":", 1)[1].strip()
    if not line:
        raise MalformedReply("no explanation in the reply")
    if len(line) > 200:
        line = line[:200]
    return line


def parse_score(text: str) -> float:
    """A number in [0, 1] (the first one in the reply)."""
    import re

    match = re.search(r"-?\d+(?:\.\d+)?", text)
    if match is None:
        raise MalformedReply(f"no number in {text[:40]!r}")
    value = float(match.group(0))
    if not 0.0 <= value <= 1.0:
        raise MalformedReply(f"score {value} is outside [0, 1]")
    return value
