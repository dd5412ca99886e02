"""`asr serve`: an HTTP server for a model, with an OpenAI-compatible transcription endpoint and a
web page to upload or record audio.

Routes:
  POST /v1/audio/transcriptions  the OpenAI audio API's request: multipart/form-data with `file`
                                 and optional `response_format` (json, text, srt, vtt,
                                 verbose_json: text, duration, segments and words with start, end
                                 and confidence). `model`, `language`, `prompt`, `temperature` and
                                 `timestamp_granularities[]` are accepted and ignored, so existing
                                 clients work unchanged.
  GET  /health                   {"status": "ok", ...} once the model is loaded
  GET  /                         the web page (asr/serving/static/index.html)

Stack: Starlette (routing, requests, multipart parsing via python-multipart) on uvicorn. Both are
small, widely deployed and actively maintained ASGI projects (Starlette is what FastAPI is built
on); an async server lets many uploads be received while the model works, and the model itself
runs in one worker thread, one batch at a time.

Exposure: `api_key` (asr serve --api-key, or $ASR_API_KEY) makes every /v1/ request need
`Authorization: Bearer KEY`, as OpenAI clients send it (401 otherwise; compared in constant time); the
page and /health stay open, and the page has a field for the key. A request from a web page of
another origin (its Origin header names another host than its Host header) is refused (403) unless
`allow_origins` lists that origin, which then also gets CORS preflight answers and headers: without
this, any page the user opens could drive a server on localhost. A loopback server without a key
also refuses Host headers that do not name this machine (`loopback_names_only`: DNS rebinding).
Each connection must send its
request headers within `header_timeout` seconds and its body within `body_timeout` (408, then
closed), so slow clients cannot hold connections open; a client that hangs up is logged in one line.

Requests flow: the upload is read with a size limit (413 over it); its header's channels x frames
are checked against `max_samples` before decoding (413: a small FLAC of silence can decode to
gigabytes); it is decoded and checked in a thread (400 for empty, unreadable, truncated, too short
or too long audio), then queued. A bounded queue (503 with Retry-After when full) feeds one worker
that takes up to `max_batch` waiting requests at once and transcribes them as one batch
(`asr.api.Recognizer.transcribe`, the bytes decoded to samples and passed on as arrays: no temporary
file); if a batch fails, its requests are retried one by one so one bad request cannot fail the others. Every error is JSON in the
OpenAI shape: {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import hmac
import io
import ipaddress
import json
import logging
import math
import re
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit

import numpy as np
import soundfile

from ..formats import format_srt, format_vtt, group_cues, words_to_json
from ..transcribe import Transcript

if TYPE_CHECKING:
    from ..api import Recognizer

log = logging.getLogger("asr.serve")

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
# Form fields of the OpenAI request that this server accepts without using them.
IGNORED_FIELDS = {"model", "language", "prompt", "temperature", "timestamp_granularities[]",
                  "timestamp_granularities", "stream", "chunking_strategy", "include[]"}
SUPPORTED_AUDIO = "WAV, FLAC, Ogg/Vorbis, Ogg/Opus, MP3, AIFF, AU, SPHERE"


@dataclass
class ServeConfig:
    max_upload_mb: float = 25.0  # request body limit (the OpenAI API's own file limit is 25 MB)
    max_audio_seconds: float = 600.0
    min_audio_seconds: float = 0.1
    max_batch: int = 8  # requests transcribed together (1: no batching)
    batch_wait_ms: float = 5.0  # how long the worker waits for more requests once it has one
    queue_size: int = 64  # requests waiting for the model; more get 503
    # Decoded samples (channels x frames) per request: 600 s of 48 kHz stereo, 230 MB as float32. The
    # upload and duration limits do not bound these (8 channels at 96 kHz of FLAC silence: 0.5 MB, 1.8 GB).
    max_samples: int = 57_600_000
    api_key: str = ""  # when set, /v1/ requests need "Authorization: Bearer <api_key>"
    allow_origins: tuple[str, ...] = ()  # other web origins that may call the API ("*": any)
    # A loopback server without a key answers only requests naming this machine in their Host header
    # (localhost, 127.0.0.1, ::1) or one of allow_hosts: a page on a domain rebound to 127.0.0.1 (DNS
    # rebinding) is same-origin for the browser, so the Origin check alone does not stop it.
    loopback_names_only: bool = False
    allow_hosts: tuple[str, ...] = ()
    header_timeout: float = 10.0  # seconds a connection has to send a request's headers
    body_timeout: float = 120.0  # seconds a request has to send its body once its headers are in


class RequestError(Exception):
    """A request the server refuses: HTTP status, message naming the problem, offending field, and
    extra response headers (Retry-After, WWW-Authenticate)."""

    def __init__(self, status: int, message: str, param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.headers = status, message, param, headers or {}


def error_body(status: int, message: str, param: str | None = None, code: str | int | None = None) -> dict:
    """An error in the OpenAI API's shape: {"error": {"message", "type", "param", "code"}}."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": status if code is None else code}}


# --- audio checks ---------------------------------------------------------------------------------

def decode_upload(data: bytes, name: str, config: ServeConfig) -> tuple[np.ndarray, int]:
    """Uploaded bytes -> (float32 samples (frames,) or (frames, channels), rate); RequestError (400)
    for an empty, unreadable, truncated, non-finite, too short or too long file."""
    if not data:
        raise RequestError(400, f"file {name!r} is empty (0 bytes)", "file")
    wav_problem = wav_truncation(data)
    if wav_problem:
        raise RequestError(400, f"file {name!r} is truncated: {wav_problem}", "file")
    try:
        info = soundfile.info(io.BytesIO(data))
    except Exception as e:  # libsndfile raises several types for unreadable data
        raise RequestError(400, f"file {name!r} is not a readable audio file ({_first_line(e)}); "
                                f"supported: {SUPPORTED_AUDIO}", "file") from None
    header_frames = 0 < info.frames < 2**62
    if header_frames and info.frames / info.samplerate > config.max_audio_seconds:
        raise RequestError(400, f"file {name!r} is too long ({info.frames / info.samplerate:.1f} s; "
                                f"at most {config.max_audio_seconds:g} s)", "file")
    channels = max(info.channels, 1)
    if header_frames and channels * info.frames > config.max_samples:
        raise too_many_samples(name, channels, info.frames, info.samplerate, config)
    max_frames = config.max_samples // channels
    try:
        # At most one frame over the limit is decoded, whatever the header claimed (or if it gave no length).
        samples, rate = soundfile.read(io.BytesIO(data), frames=max_frames + 1, dtype="float32", always_2d=False)
    except Exception as e:
        raise RequestError(400, f"file {name!r} cannot be decoded, it may be truncated ({_first_line(e)})", "file") from None
    if samples.shape[0] > max_frames:
        raise too_many_samples(name, channels, None, info.samplerate, config)
    seconds = samples.shape[0] / rate if samples.size else 0.0
    if samples.size == 0:
        raise RequestError(400, f"file {name!r} holds no audio samples", "file")
    if not np.isfinite(samples).all():
        raise RequestError(400, f"file {name!r} holds NaN or infinite samples", "file")
    if seconds < config.min_audio_seconds:
        raise RequestError(400, f"file {name!r} is too short ({seconds:.3f} s; at least {config.min_audio_seconds:g} s)", "file")
    if seconds > config.max_audio_seconds:
        raise RequestError(400, f"file {name!r} is too long ({seconds:.1f} s; at most {config.max_audio_seconds:g} s)", "file")
    return samples, int(rate)


def too_many_samples(name: str, channels: int, frames: int | None, rate: int, config: ServeConfig) -> RequestError:
    """The 413 for audio that decodes to more than config.max_samples (`frames` None: the header did
    not say how many; decoding stopped at the limit)."""
    limit = f"the limit of {config.max_samples:,} samples per request (asr serve --max-samples)"
    if frames is None:
        return RequestError(413, f"file {name!r} decodes to more than {limit}: {channels} channel(s) at {rate} Hz", "file")
    total = channels * frames
    return RequestError(413, f"file {name!r} would decode to {channels} channel(s) x {frames:,} frames at {rate} Hz "
                             f"= {total:,} samples ({4 * total / 1e6:,.0f} MB as float32), over {limit}; send fewer "
                             "channels, a lower sample rate or a shorter file", "file")


def wav_truncation(data: bytes) -> str:
    """For RIFF/WAVE bytes whose data chunk declares more bytes than follow it, what is missing
    ('' otherwise, and for other formats). libsndfile silently reads what is there, so a cut-off
    upload would otherwise be transcribed as a shorter recording."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return ""
    position = 12
    while position + 8 <= len(data):
        chunk, size = data[position:position + 4], struct.unpack("<I", data[position + 4:position + 8])[0]
        if chunk == b"data":
            present = len(data) - position - 8
            # 0 and 0xFFFFFFFF mark a streamed WAV whose length was never written: not a truncation.
            if size not in (0, 0xFFFFFFFF) and present < size:
                return f"the WAV header declares {size} bytes of audio but only {present} are present"
            return ""
        position += 8 + size + (size & 1)
    return "the WAV file ends before its audio data"


def _first_line(error: Exception) -> str:
    """libsndfile's reason, without its 'Error opening <_io.BytesIO object at 0x...>: ' prefix."""
    lines = str(error).strip().splitlines()
    line = lines[0] if lines else type(error).__name__
    return re.sub(r"^Error opening <[^>]*>: ", "", line).strip() or type(error).__name__


# --- responses ------------------------------------------------------------------------------------

def format_response(result: Transcript, response_format: str) -> tuple[str | dict, str]:
    """A transcript (with words) -> (body, media type) in one of RESPONSE_FORMATS."""
    if response_format == "json":
        return {"text": result.text}, "application/json"
    if response_format == "text":
        return result.text + "\n", "text/plain; charset=utf-8"
    if response_format == "srt":
        return format_srt(result.words), "text/plain; charset=utf-8"
    if response_format == "vtt":
        return format_vtt(result.words), "text/vtt; charset=utf-8"
    words = words_to_json(result.words)
    segments = []
    for i, (start, end, text) in enumerate(group_cues(result.words)):
        inside = [w.confidence for w in result.words if start <= w.start and w.end <= end]
        segments.append({"id": i, "start": start, "end": end, "text": text,
                         "confidence": round(sum(inside) / len(inside), 3) if inside else 0.0})
    return ({"task": "transcribe", "language": "english", "duration": result.duration, "text": result.text,
             "words": words, "segments": segments}, "application/json")


def checked_form(form: Any) -> tuple[Any, str]:
    """(the uploaded file, the response format) of a parsed multipart form; RequestError (400) for a
    missing or text 'file', an unknown response_format or an unknown field."""
    fields = list(form.keys())
    upload = form.get("file")
    if upload is None:
        got = ", ".join(repr(f) for f in fields) or "none"
        raise RequestError(400, f"missing form field 'file' (the audio file to transcribe); fields sent: {got}", "file")
    if isinstance(upload, str):
        raise RequestError(400, "form field 'file' must be a file upload, not a text value", "file")
    response_format = str(form.get("response_format") or "json")
    if response_format not in RESPONSE_FORMATS:
        raise RequestError(400, f"unsupported response_format {response_format!r}; choose one of "
                                f"{', '.join(RESPONSE_FORMATS)}", "response_format")
    unknown = [f for f in fields if f not in IGNORED_FIELDS | {"file", "response_format"}]
    if unknown:
        raise RequestError(400, f"unknown form field(s) {', '.join(map(repr, unknown))}; this endpoint takes "
                                "'file' and 'response_format' (and OpenAI's model, language, prompt, temperature, "
                                "timestamp_granularities[], which it ignores)", unknown[0])
    return upload, response_format


# --- the batching worker --------------------------------------------------------------------------

class BatchWorker:
    """A bounded queue of (samples, rate) jobs and one task that feeds them to the recognizer, up
    to `max_batch` at a time, in a single thread: the model never runs two batches at once."""

    def __init__(self, recognizer: Recognizer, config: ServeConfig):
        self.recognizer, self.config = recognizer, config
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=config.queue_size)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asr-model")
        self.batches = self.requests = 0
        self.batch_seconds = 0.0  # the latest batches' time in the model (moving average), for Retry-After
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, samples: np.ndarray, rate: int) -> Transcript:
        future = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait(((samples, rate), future))
        except asyncio.QueueFull:
            wait = self.retry_after()
            raise RequestError(503, f"the server is busy ({self.config.queue_size} requests waiting); retry in {wait} s",
                               headers={"Retry-After": str(wait)}) from None
        return await future

    def retry_after(self) -> int:
        """Whole seconds until the queue has room again: the waiting batches at the recent time per batch."""
        return max(1, math.ceil(self.batch_seconds * math.ceil(self.queue.qsize() / self.config.max_batch)))

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self.queue.get()]
            deadline = loop.time() + self.config.batch_wait_ms / 1000
            while len(jobs) < self.config.max_batch:
                try:
                    jobs.append(self.queue.get_nowait() if loop.time() >= deadline else
                                await asyncio.wait_for(self.queue.get(), deadline - loop.time()))
                except (asyncio.QueueEmpty, asyncio.TimeoutError):
                    break
            jobs = [(audio, future) for audio, future in jobs if not future.cancelled()]  # client gone
            if not jobs:
                continue
            self.batches += 1
            self.requests += len(jobs)
            started = time.monotonic()
            try:
                results = await loop.run_in_executor(self.executor, self.recognizer.transcribe, [a for a, _ in jobs])
                outcomes: list[tuple[Transcript | None, Exception | None]] = [(r, None) for r in results]
            except Exception as batch_error:  # find the request that failed; the others still get answers
                if len(jobs) == 1:
                    outcomes = [(None, batch_error)]
                else:
                    outcomes = []
                    for audio, _ in jobs:
                        try:
                            outcomes.append((await loop.run_in_executor(self.executor, self.recognizer.transcribe, audio), None))
                        except Exception as e:
                            outcomes.append((None, e))
            seconds = time.monotonic() - started
            self.batch_seconds = seconds if self.batches == 1 else 0.8 * self.batch_seconds + 0.2 * seconds
            for (_, future), (result, error) in zip(jobs, outcomes):
                if future.done():
                    continue
                if error is None:
                    future.set_result(result)
                else:
                    future.set_exception(error)


# --- who may call: API key, origins --------------------------------------------------------------

ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]
PREFLIGHT_HEADERS = {"Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                     "Access-Control-Allow-Headers": "Authorization, Content-Type", "Access-Control-Max-Age": "600"}


def is_loopback(host: str) -> bool:
    """Whether listening on `host` keeps the server to this machine (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def same_origin(origin: str, host: str) -> bool:
    """Whether a request's Origin header ("http://127.0.0.1:8000") names the server it was sent to
    (its Host header, "127.0.0.1:8000"): then the page making it is one this server served."""
    parts, target = urlsplit(origin), urlsplit(f"//{host}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    default = 443 if parts.scheme == "https" else 80
    try:
        port, target_port = parts.port or default, target.port or default
    except ValueError:  # a malformed port in either header
        return False
    return (parts.hostname, port) == (target.hostname, target_port)


class AccessGuard:
    """ASGI middleware in front of the application: refuses cross-origin requests unless their origin
    is allowed, answers CORS preflights for allowed origins only, and checks the API key on /v1/.
    Refusals are JSON in the OpenAI shape; nothing behind it runs for them."""

    def __init__(self, app: ASGIApp, config: ServeConfig):
        self.app, self.config = app, config
        # Digests of equal length: the comparison's time tells neither the key's content nor its length.
        self.key_digest = hashlib.sha256(config.api_key.encode("utf-8")).digest() if config.api_key else b""

    def allowed_origin(self, origin: str) -> bool:
        return "*" in self.config.allow_origins or origin.rstrip("/") in self.config.allow_origins

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        method, path, origin = scope["method"], scope["path"], headers.get("origin")
        if self.config.loopback_names_only:
            name = urlsplit(f"//{headers.get('host', '')}").hostname or ""
            if not is_loopback(name) and name not in self.config.allow_hosts:
                return await self.refuse(scope, receive, send, 403, (
                    f"Host {name!r} is not a name of this machine: a server on loopback without an API key answers "
                    f"only localhost, 127.0.0.1 and ::1 (a web page could otherwise reach it by pointing its own "
                    f"domain there); a reverse proxy's name is allowed with asr serve --allow-host {name}"),
                    "host_not_allowed")
        cross = origin is not None and not same_origin(origin, headers.get("host", ""))
        allowed = cross and self.allowed_origin(origin)
        if method == "OPTIONS" and origin is not None and "access-control-request-method" in headers:
            if cross and not allowed:
                return await self.refuse(scope, receive, send, 403, self.origin_message(origin), "origin_not_allowed")
            return await self.respond(scope, receive, send, 204, None, {**PREFLIGHT_HEADERS, **self.cors(origin)})
        if cross and not allowed and method not in ("GET", "HEAD"):
            return await self.refuse(scope, receive, send, 403, self.origin_message(origin), "origin_not_allowed")
        extra = self.cors(origin) if allowed else {}
        if self.key_digest and path.startswith("/v1/") and method != "OPTIONS":
            given = headers.get("authorization", "")
            scheme, _, token = given.partition(" ")
            digest = hashlib.sha256(token.strip().encode("utf-8")).digest()
            if scheme.lower() != "bearer" or not hmac.compare_digest(digest, self.key_digest):
                problem = "no API key was sent" if not given else "the API key is not valid"
                return await self.refuse(scope, receive, send, 401, f"{problem}: this server needs the header "
                                         "'Authorization: Bearer <key>' (the key given to asr serve --api-key or "
                                         "$ASR_API_KEY)", "invalid_api_key",
                                         {"WWW-Authenticate": 'Bearer realm="asr"', **extra})
        if not extra:
            return await self.app(scope, receive, send)

        async def send_with_cors(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []),
                                                  *((k.lower().encode(), v.encode()) for k, v in extra.items())]}
            await send(message)

        await self.app(scope, receive, send_with_cors)

    def cors(self, origin: str) -> dict[str, str]:
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}

    def origin_message(self, origin: str) -> str:
        if origin == "null":  # a local file, a sandboxed frame, a redirect: no origin to allow
            return "requests from web pages of other origins are refused (Origin 'null': a page without an origin)"
        return (f"requests from web pages of other origins are refused ({origin!r}); allow it with "
                f"asr serve --allow-origin {origin}")

    async def refuse(self, scope: dict, receive: Callable, send: Callable, status: int, message: str, code: str,
                     headers: dict[str, str] | None = None) -> None:
        log.info("%s %s: %d %s", scope["method"], scope["path"], status, message)
        await self.respond(scope, receive, send, status, error_body(status, message, None, code), headers or {})

    @staticmethod
    async def respond(scope: dict, receive: Callable, send: Callable, status: int, body: dict | None,
                      headers: dict[str, str]) -> None:
        from starlette.responses import JSONResponse, Response

        response = JSONResponse(body, status, headers) if body is not None else Response(None, status, headers)
        await response(scope, receive, send)


# --- connections: header and body deadlines -------------------------------------------------------

TIMEOUT_MESSAGE = "the request was not received within {seconds:g} s ({part}); the connection is closed"


def timed_protocol(header_timeout: float, body_timeout: float) -> type:
    """uvicorn's h11 protocol with two deadlines per request: its headers must arrive within
    `header_timeout` seconds of the connection opening (or of the previous response), its body within
    `body_timeout` of the headers; past either, the client gets a 408 (if nothing was answered yet) and
    the connection is closed. uvicorn itself only times out idle keep-alive connections, so one
    sending a byte every few seconds held its slot indefinitely."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TimedH11Protocol(H11Protocol):
        deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.arm(header_timeout, "headers")

        def arm(self, seconds: float, part: str) -> None:
            self.disarm()
            if seconds > 0:
                self.deadline = self.loop.call_later(seconds, self.expire, seconds, part)

        def disarm(self) -> None:
            if self.deadline is not None:
                self.deadline.cancel()
                self.deadline = None

        def data_received(self, data: bytes) -> None:
            between_requests = self.cycle is None or (self.cycle.response_complete and not self.cycle.more_body)
            if self.deadline is None and between_requests:
                self.arm(header_timeout, "headers")  # the next request on a kept-alive connection
            super().data_received(data)

        def handle_events(self) -> None:
            cycle = self.cycle
            super().handle_events()
            if self.cycle is not cycle and self.cycle.more_body:  # a request's headers are in, its body is due
                self.arm(body_timeout, "body")
            elif self.cycle is not None and not self.cycle.more_body:  # the whole request is in
                self.disarm()

        def on_response_complete(self) -> None:
            if not self.cycle.more_body:  # else answered early (401, 413): the rest of the body is still due in time
                self.disarm()
            super().on_response_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self.disarm()
            super().connection_lost(exc)

        def expire(self, seconds: float, part: str) -> None:
            self.deadline = None
            if self.transport.is_closing():
                return
            log.info("%s: closed: %s", "%s:%d" % self.client if self.client else "client",
                     TIMEOUT_MESSAGE.format(seconds=seconds, part=part))
            if self.cycle is None or not self.cycle.response_started or self.cycle.response_complete:
                body = json.dumps(error_body(408, TIMEOUT_MESSAGE.format(seconds=seconds, part=part))).encode()
                self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                                     b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            if self.cycle is not None:
                # What the application still sends goes nowhere, as after a client's disconnect; its
                # handler of that disconnect stays quiet: this line says what happened.
                self.cycle.disconnected = True
                self.cycle.scope["asr.timed_out"] = True
            try:
                self.conn.send(h11.ConnectionClosed())
            except h11.LocalProtocolError:
                pass
            self.transport.close()

    return TimedH11Protocol


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port, made before the model loads so that a port in use is
    reported at once; RuntimeError naming the address and the reason otherwise."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as e:
        raise RuntimeError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a recent server's TIME_WAIT does not block
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as e:
        sock.close()
        hint = "; another program is using it: stop it or choose another --port" if e.errno == errno.EADDRINUSE else ""
        raise RuntimeError(f"cannot listen on {host}:{port}: {e.strerror or e}{hint}") from None
    sock.set_inheritable(True)
    return sock


# --- the application ------------------------------------------------------------------------------

def create_app(recognizer: Recognizer, config: ServeConfig | None = None, model_name: str = ""):
    """The Starlette application serving `recognizer` (an asr.api.Recognizer)."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.formparsers import MultiPartException, MultiPartParser
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    config = config or ServeConfig()
    limit = int(config.max_upload_mb * 1e6)
    page = resources.files("asr.serving").joinpath("static/index.html").read_text(encoding="utf-8")
    state: dict[str, BatchWorker] = {}

    def error_response(status: int, message: str, param: str | None = None,
                       headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(error_body(status, message, param), status, headers)

    async def limited_body(request: Request) -> AsyncIterator[bytes]:
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise RequestError(413, f"the request is larger than the limit of {config.max_upload_mb:g} MB")
            yield chunk

    async def transcriptions(request: Request) -> Response:
        content_type = request.headers.get("content-type", "")
        if not content_type.lower().startswith("multipart/form-data"):
            raise RequestError(415, f"Content-Type must be multipart/form-data with a 'file' field, "
                                    f"not {content_type or 'none'!r}")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise RequestError(413, f"the request is {int(declared) / 1e6:.1f} MB, over the limit of {config.max_upload_mb:g} MB")
        try:
            form = await MultiPartParser(request.headers, limited_body(request), max_files=1, max_fields=20,
                                         max_part_size=64 * 1024).parse()
        except MultiPartException as e:
            raise RequestError(400, f"malformed multipart/form-data request: {e.message}") from None
        try:
            return await answer(form)
        finally:
            await form.close()

    async def answer(form) -> Response:
        upload, response_format = checked_form(form)
        name = upload.filename or "file"
        data = await upload.read()
        samples, rate = await asyncio.to_thread(decode_upload, data, name, config)
        result = await state["worker"].submit(samples, rate)
        body, media_type = format_response(result, response_format)
        if isinstance(body, dict):
            return JSONResponse(body)
        return Response(body, media_type=media_type)

    async def health(request: Request) -> Response:
        worker = state.get("worker")
        return JSONResponse({"status": "ok", "model": model_name, "sample_rate": recognizer.sample_rate,
                             "decoder": recognizer.settings.decoder, "queued": worker.queue.qsize() if worker else 0,
                             "max_batch": config.max_batch, "batches": worker.batches if worker else 0,
                             "requests": worker.requests if worker else 0, "api_key_required": bool(config.api_key),
                             "limits": {"max_upload_mb": config.max_upload_mb,
                                        "max_audio_seconds": config.max_audio_seconds,
                                        "min_audio_seconds": config.min_audio_seconds,
                                        "max_samples": config.max_samples}})

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    async def on_request_error(request: Request, e: RequestError) -> Response:
        log.info("%s %s: %d %s", request.method, request.url.path, e.status, e.message)
        return error_response(e.status, e.message, e.param, e.headers)

    async def on_client_gone(request: Request, e: ClientDisconnect) -> Response:
        # The client hung up mid-upload (or its connection timed out, already logged): one line, no traceback;
        # nobody reads the answer.
        client = f"{request.client.host}:{request.client.port}" if request.client else "client"
        if not request.scope.get("asr.timed_out"):
            log.info("%s %s: %s closed the connection before its request was complete", request.method,
                     request.url.path, client)
        return error_response(400, "the request was not received completely")

    async def on_http_error(request: Request, e: HTTPException) -> Response:
        return error_response(e.status_code, f"{request.method} {request.url.path}: {e.detail}")

    async def on_error(request: Request, e: Exception) -> Response:
        log.exception("%s %s failed", request.method, request.url.path)
        return error_response(500, f"transcription failed ({type(e).__name__}: {e})")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        state["worker"] = BatchWorker(recognizer, config)
        state["worker"].start()
        yield
        await state["worker"].stop()

    routes = [Route("/", index), Route("/health", health),
              Route("/v1/audio/transcriptions", transcriptions, methods=["POST"])]
    handlers = {RequestError: on_request_error, ClientDisconnect: on_client_gone, HTTPException: on_http_error,
                Exception: on_error}
    return AccessGuard(Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan), config)


def serve(recognizer: Recognizer, host: str = "127.0.0.1", port: int = 8000, config: ServeConfig | None = None,
          model_name: str = "", sock: socket.socket | None = None) -> None:
    """Run the server until interrupted, on `sock` (from `bind_socket`, bound before the model was
    loaded) or else on a socket bound to host:port now."""
    import uvicorn

    config = config or ServeConfig()
    app = create_app(recognizer, config, model_name)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="info", access_log=False,
                                           http=timed_protocol(config.header_timeout, config.body_timeout)))
    server.run(sockets=[sock or bind_socket(host, port)])
