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

Requests flow: the upload is read with a size limit (413 over it), decoded and checked in a thread
(400 for empty, unreadable, truncated, too short or too long audio), then queued. A bounded queue
(503 when full) feeds one worker that takes up to `max_batch` waiting requests at once and
transcribes them as one batch (`asr.api.Recognizer.transcribe`, the bytes decoded to samples and
passed on as arrays: no temporary file); if a batch fails, its requests
are retried one by one so one bad request cannot fail the others. Every error is JSON in the
OpenAI shape: {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any, AsyncIterator

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


class RequestError(Exception):
    """A request the server refuses: HTTP status, message naming the problem, offending field."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


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
    if 0 < info.frames < 2**62 and info.frames / info.samplerate > config.max_audio_seconds:
        raise RequestError(400, f"file {name!r} is too long ({info.frames / info.samplerate:.1f} s; "
                                f"at most {config.max_audio_seconds:g} s)", "file")
    try:
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=False)
    except Exception as e:
        raise RequestError(400, f"file {name!r} cannot be decoded, it may be truncated ({_first_line(e)})", "file") from None
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
            raise RequestError(503, f"the server is busy ({self.config.queue_size} requests waiting); retry later") from None
        return await future

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
            for (_, future), (result, error) in zip(jobs, outcomes):
                if future.done():
                    continue
                if error is None:
                    future.set_result(result)
                else:
                    future.set_exception(error)


# --- the application ------------------------------------------------------------------------------

def create_app(recognizer: Recognizer, config: ServeConfig | None = None, model_name: str = ""):
    """The Starlette application serving `recognizer` (an asr.api.Recognizer)."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.formparsers import MultiPartException, MultiPartParser
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    config = config or ServeConfig()
    limit = int(config.max_upload_mb * 1e6)
    page = resources.files("asr.serving").joinpath("static/index.html").read_text(encoding="utf-8")
    state: dict[str, BatchWorker] = {}

    def error_response(status: int, message: str, param: str | None = None) -> JSONResponse:
        kind = "invalid_request_error" if status < 500 else "server_error"
        return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": status}}, status)

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
                             "requests": worker.requests if worker else 0,
                             "limits": {"max_upload_mb": config.max_upload_mb,
                                        "max_audio_seconds": config.max_audio_seconds,
                                        "min_audio_seconds": config.min_audio_seconds}})

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    async def on_request_error(request: Request, e: RequestError) -> Response:
        log.info("%s %s: %d %s", request.method, request.url.path, e.status, e.message)
        return error_response(e.status, e.message, e.param)

    async def on_http_error(request: Request, e: HTTPException) -> Response:
        return error_response(e.status_code, f"{request.method} {request.url.path}: {e.detail}")

    async def on_error(request: Request, e: Exception) -> Response:
        log.exception("%s %s failed", request.method, request.url.path)
        return error_response(500, f"transcription failed ({type(e).__name__}: {e})")

    async def lifespan(app):
        state["worker"] = BatchWorker(recognizer, config)
        state["worker"].start()
        yield
        await state["worker"].stop()

    routes = [Route("/", index), Route("/health", health),
              Route("/v1/audio/transcriptions", transcriptions, methods=["POST"])]
    handlers = {RequestError: on_request_error, HTTPException: on_http_error, Exception: on_error}
    return Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)


def serve(recognizer: Recognizer, host: str = "127.0.0.1", port: int = 8000, config: ServeConfig | None = None,
          model_name: str = "") -> None:
    """Run the server until interrupted."""
    import uvicorn

    app = create_app(recognizer, config, model_name)
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)
