"""A client for OpenAI-compatible chat endpoints that accept images (vLLM, OpenRouter,
OpenAI), on the ``openai`` SDK (``pip install "diffdict[vlm]"``); images go as PNG data URLs.

- The SDK retries (honouring ``Retry-After``) on HTTP 429, 5xx, timeouts and dropped
  connections; a reply the caller's ``parse`` cannot use is asked again (``backoff``
  doubling up to ``max_backoff``). A refused key (HTTP 401/403) stops at once.
- At most ``requests_per_minute`` requests (retries included) start per minute.
- A disk cache keyed by the request (never the key) holds only replies ``parse`` accepted.

No request leaves the machine unless a base URL says so; the only credential sent is the
one in ``api_key_env`` (none when it is unset).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import random
import re
import threading
import time
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
    backoff: float = 1.0  # seconds before re-asking after an unusable reply; doubled each time
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
        self.requests_sent = 0  # HTTP requests, the SDK's retries included
        self.cache_hits = 0
        self._key = os.environ.get(self.config.api_key_env, "")
        try:
            import openai
        except ImportError:
            raise DiffdictError('the VLM client needs the openai SDK: pip install "diffdict[vlm]"') from None
        self._openai, self._client = openai, openai.OpenAI(
            base_url=self.config.base_url, api_key=self._key or "unset", max_retries=self.config.max_retries,
            timeout=self.config.timeout, http_client=openai.DefaultHttpxClient(event_hooks={"request": [self._started]}),
        )

    def _started(self, request) -> None:
        """Called by the HTTP client before each request it sends: the rate limit and the count."""
        rpm = self.config.requests_per_minute
        with self._lock:
            self.requests_sent += 1
            if rpm and rpm > 0:
                gap = 60.0 / rpm - (time.monotonic() - self._last_start)
                if gap > 0:
                    self._sleep(gap)
                self._last_start = time.monotonic()

    def request_key(self, body: dict) -> str:
        blob = json.dumps({"url": self.url, "body": body}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def _post(self, body: dict) -> str:
        """The reply's raw body; a DiffdictError when the SDK gave up or the endpoint said no."""
        openai, rest = self._openai, {k: v for k, v in body.items() if k not in ("model", "messages")}
        no_key = {} if self._key else {"Authorization": openai.Omit()}  # send no credential at all
        try:
            return self._client.chat.completions.with_raw_response.create(
                model=body["model"], messages=body["messages"], extra_body=rest, extra_headers=no_key).text
        except openai.APIStatusError as error:
            status, raw = error.status_code, _excerpt(error.response.text, self._key)
            if status in (401, 403):
                where = f"${self.config.api_key_env} is {'set' if self._key else 'not set'}"
                raise DiffdictError(f"the VLM endpoint {self.url} refused the API key (HTTP {status}; {where}): {raw}") from None
            if status not in (408, 409, 429) and status < 500:
                raise DiffdictError(f"the VLM endpoint {self.url} rejected the request (HTTP {status}): {raw}") from None
            problem = f"HTTP {status}: {raw}"
        except openai.APITimeoutError:
            problem = f"timed out after {self.config.timeout:g} s"
        except openai.APIConnectionError as error:
            problem = f"connection failed: {error.__cause__ or error}"
        raise DiffdictError(f"the VLM endpoint {self.url} gave no usable reply after "
                            f"{self.config.max_retries + 1} attempts: {problem}")

    def chat(self, messages: list[dict], parse: Callable[[str], Any] = lambda text: text, **params) -> Any:
        """``parse(reply text)`` of a chat request, or of its cached reply. ``parse`` raises
        :class:`MalformedReply` (or ValueError) for a reply it cannot use: asked again, and
        after ``max_retries`` a DiffdictError names the endpoint and what came back."""
        body = {"model": self.config.model, "messages": messages, "temperature": self.config.temperature,
                "max_tokens": self.config.max_tokens, **params}
        key = self.request_key(body)
        path = Path(self.config.cache_dir) / key[:2] / f"{key}.json" if self.config.cache_dir else None
        if path is not None and path.exists():
            try:
                value = parse(json.loads(path.read_text())["reply"])
                self.cache_hits += 1
                return value
            except (ValueError, KeyError, OSError):
                pass  # a damaged or unusable cache entry: ask again
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                delay = self.config.backoff * 2 ** (attempt - 1) * (1 + 0.25 * random.random())
                self._sleep(min(delay, self.config.max_backoff))
            raw = self._post(body)
            try:
                value = parse(text := _reply_text(raw))
            except (ValueError, TypeError) as error:  # MalformedReply and json errors are ValueErrors
                problem = f"malformed reply ({error}): {_excerpt(raw, self._key)}"
                continue
            if path is not None:
                atomic_write_text(path, json.dumps({"reply": text, "model": self.config.model}) + "\n")
            return value
        raise DiffdictError(f"the VLM endpoint {self.url} gave no usable reply after "
                            f"{self.config.max_retries + 1} attempts: {problem}")


# the VlmConfig fields that interpret's options may set: texts (None or empty keeps the default), numbers
_TEXT_OPTIONS = ("base_url", "model", "api_key_env", "cache_dir")
_NUMBER_OPTIONS = {"timeout": float, "max_retries": int, "requests_per_minute": float, "backoff": float}


def vlm_client(options: dict) -> VlmClient:
    """``options["client"]``, else a client configured by the VlmConfig fields in ``options``."""
    if options.get("client") is not None:
        return options["client"]
    given = {k: str(options[k]) for k in _TEXT_OPTIONS if options.get(k)}
    given |= {k: read(options[k]) for k, read in _NUMBER_OPTIONS.items() if options.get(k) is not None}
    return VlmClient(VlmConfig(**given))


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


def _reply_text(raw: str) -> str:
    payload = json.loads(raw)
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
    return line[:200]


def parse_score(text: str) -> float:
    """A number in [0, 1] (the first one in the reply)."""
    match = re.search(r"-?\d+(?:\.\d+)?", text)
    if match is None:
        raise MalformedReply(f"no number in {text[:40]!r}")
    value = float(match.group(0))
    if not 0.0 <= value <= 1.0:
        raise MalformedReply(f"score {value} is outside [0, 1]")
    return value
