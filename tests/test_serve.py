"""`asr serve`, tested as a real server process on a loopback port: the OpenAI-style endpoint in
every response_format, /health and the page, each kind of bad request (with the 4xx and message it
must get, and a good request still answered afterwards), and concurrent requests being batched.
All traffic goes to 127.0.0.1 only."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("multipart")

from asr.data import read_manifest  # noqa: E402
from asr.serving.http import RequestError, ServeConfig, decode_upload, wav_truncation  # noqa: E402
from server_process import ROOT, exchange, free_port, request, start_server, stop_server  # noqa: E402

MAX_UPLOAD_MB = 1.0
MAX_AUDIO_SECONDS = 20.0


# --- multipart/form-data as the openai package sends it ---------------------------------------------

def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes, str]]) -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data request."""
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for name, value in fields.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data, content_type) in files.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                  f"Content-Type: {content_type}\r\n\r\n".encode())
        out.write(data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def transcribe(port: int, data: bytes, filename: str = "speech.wav", response_format: str | None = None,
               field: str = "file", extra: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    fields = {"model": "whisper-1", **(extra or {})}
    if response_format:
        fields["response_format"] = response_format
    body, content_type = multipart(fields, {field: (filename, data, "audio/wav")})
    return request(port, "POST", "/v1/audio/transcriptions", body, content_type)


@pytest.fixture(scope="module")
def server(synth_model, tmp_path_factory):
    checkpoint, manifest = synth_model
    process, port = start_server(checkpoint, tmp_path_factory.mktemp("serve") / "server.log",
                                 "--max-upload-mb", str(MAX_UPLOAD_MB), "--max-audio-seconds", str(MAX_AUDIO_SECONDS))
    yield port, read_manifest(manifest), process
    stop_server(process)


def wav_bytes(samples: np.ndarray, rate: int, format: str = "WAV", subtype: str | None = "PCM_16") -> bytes:
    out = io.BytesIO()
    soundfile.write(out, samples, rate, format=format, subtype=subtype)
    return out.getvalue()


# --- the endpoint ---------------------------------------------------------------------------------

def test_health_and_page(server):
    port, _, _ = server
    status, content_type, body = request(port, "GET", "/health")
    assert status == 200 and content_type.startswith("application/json")
    health = json.loads(body)
    assert health["status"] == "ok" and health["model"] == "best.pt" and health["sample_rate"] == 16000
    status, content_type, body = request(port, "GET", "/")
    assert status == 200 and content_type.startswith("text/html")
    assert b"/v1/audio/transcriptions" in body and b'id="record"' in body


@pytest.mark.parametrize("response_format", [None, "json", "text", "srt", "vtt", "verbose_json"])
def test_every_response_format(server, response_format):
    port, utts, _ = server
    utt = utts[0]
    status, content_type, body = transcribe(port, Path(utt.audio).read_bytes(), response_format=response_format)
    assert status == 200, body
    if response_format in (None, "json"):
        assert json.loads(body) == {"text": utt.text}
    elif response_format == "text":
        assert content_type.startswith("text/plain") and body.decode() == utt.text + "\n"
    elif response_format == "srt":
        lines = body.decode().splitlines()
        assert lines[0] == "1" and lines[1].startswith("00:00:00,") and " --> " in lines[1] and lines[2] == utt.text
    elif response_format == "vtt":
        assert content_type.startswith("text/vtt")
        text = body.decode()
        assert text.startswith("WEBVTT\n\n00:00:00.") and utt.text in text
    else:
        obj = json.loads(body)
        assert obj["text"] == utt.text and obj["task"] == "transcribe"
        assert obj["duration"] == pytest.approx(utt.duration, abs=1e-3)
        assert [w["word"] for w in obj["words"]] == utt.text.split()
        for w in obj["words"]:
            assert 0 <= w["start"] < w["end"] <= obj["duration"] and 0 < w["confidence"] <= 1
        assert obj["segments"][0]["text"] == utt.text


def test_other_formats_and_rates(server):
    """FLAC at 8 kHz and a float WAV: decoded from the upload and resampled like files."""
    port, utts, _ = server
    samples, rate = soundfile.read(utts[1].audio, dtype="float32")
    for data, name in ((wav_bytes(samples, rate, "FLAC", "PCM_16"), "speech.flac"),
                       (wav_bytes(samples, rate, "WAV", "FLOAT"), "speech.wav")):
        status, _, body = transcribe(port, data, name)
        assert status == 200 and json.loads(body)["text"] == utts[1].text


def test_a_real_recording(server, shared_data):
    """A real spoken digit (FSDD, 8 kHz) goes through; the fixture model knows no digits, so only
    the shape of the answer is checked."""
    port, _, _ = server
    data = (shared_data / "fsdd" / "recordings" / "3_jackson_0.wav").read_bytes()
    status, _, body = transcribe(port, data, "3_jackson_0.wav", "verbose_json")
    assert status == 200, body
    obj = json.loads(body)
    assert isinstance(obj["text"], str) and 0.2 < obj["duration"] < 2.0


def bad_requests(good: bytes) -> dict[str, tuple]:
    """name -> (request arguments, expected status, a phrase the message must hold)."""
    rate = 16000
    short = wav_bytes(np.zeros(int(0.05 * rate), np.float32), rate)
    long = wav_bytes(np.zeros(int((MAX_AUDIO_SECONDS + 1) * 8000), np.float32), 8000)
    huge = wav_bytes(np.zeros(int(MAX_UPLOAD_MB * 1e6 / 2) + 8000, np.float32), rate)
    upload = lambda data, **kw: ("upload", data, kw)  # noqa: E731
    return {
        "not audio": (upload(b"this is a text file, not a recording\n" * 20), 400, "not a readable audio file"),
        "empty": (upload(b""), 400, "is empty"),
        "truncated": (upload(good[: len(good) // 2]), 400, "is truncated"),
        "header cut": (upload(good[:44]), 400, "declares 44160 bytes of audio but only 0"),
        "no samples": (upload(wav_bytes(np.zeros(0, np.float32), rate)), 400, "holds no audio samples"),
        "0.05 s": (upload(short), 400, "too short (0.050 s"),
        "too long": (upload(long), 400, "too long (21.0 s"),
        "over the size limit": (upload(huge), 413, "limit of 1 MB"),
        "wrong content type": (("raw", good, "audio/wav"), 415, "Content-Type must be multipart/form-data"),
        "json body": (("raw", b'{"file": "speech.wav"}', "application/json"), 415, "not 'application/json'"),
        "missing field": (upload(good, field="audio"), 400, "missing form field 'file'"),
        "file as text": (("fields", {"file": "speech.wav"}), 400, "must be a file upload"),
        "unknown format": (upload(good, response_format="xml"), 400, "unsupported response_format 'xml'"),
        "unknown field": (upload(good, extra={"speed": "2"}), 400, "unknown form field(s) 'speed'"),
        "malformed multipart": (("raw", b"--x\r\ngarbage", "multipart/form-data; boundary=x"), 400, "missing form field"),
    }


def send(port: int, spec: tuple) -> tuple[int, str, bytes]:
    kind = spec[0]
    if kind == "upload":
        return transcribe(port, spec[1], **spec[2])
    if kind == "raw":
        return request(port, "POST", "/v1/audio/transcriptions", spec[1], spec[2])
    body, content_type = multipart(spec[1], {})
    return request(port, "POST", "/v1/audio/transcriptions", body, content_type)


def test_bad_requests_get_a_4xx_naming_the_problem_and_the_server_keeps_serving(server):
    port, utts, process = server
    good = Path(utts[0].audio).read_bytes()
    for name, (spec, expected, phrase) in bad_requests(good).items():
        status, content_type, body = send(port, spec)
        assert status == expected, f"{name}: {status} {body[:300]!r}"
        assert content_type.startswith("application/json"), name
        error = json.loads(body)["error"]
        assert phrase in error["message"], f"{name}: {error['message']!r}"
        assert error["type"] == "invalid_request_error"
    assert request(port, "GET", "/nowhere")[0] == 404
    assert request(port, "GET", "/v1/audio/transcriptions")[0] == 405
    assert process.poll() is None
    status, _, body = transcribe(port, good)
    assert status == 200 and json.loads(body)["text"] == utts[0].text


def test_concurrent_requests_are_batched_and_all_answered(server):
    port, utts, _ = server
    before = json.loads(request(port, "GET", "/health")[2])
    jobs = [utts[i % len(utts)] for i in range(16)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda u: transcribe(port, Path(u.audio).read_bytes()), jobs))
    assert [json.loads(body)["text"] for _, _, body in answers] == [u.text for u in jobs]
    after = json.loads(request(port, "GET", "/health")[2])
    requests, batches = after["requests"] - before["requests"], after["batches"] - before["batches"]
    assert requests == 16
    assert batches < requests, "8 clients at once should share batches"


# --- the checks, without a server -----------------------------------------------------------------

def test_wav_truncation_is_detected_from_the_header():
    data = wav_bytes(np.zeros(1600, np.float32), 16000)
    assert wav_truncation(data) == ""
    assert "declares 3200 bytes of audio but only 1000" in wav_truncation(data[:44 + 1000])
    assert wav_truncation(b"fLaC" + data) == ""  # not a WAV: left to the decoder
    with pytest.raises(RequestError, match="is truncated"):
        decode_upload(data[:100], "x.wav", ServeConfig())


def test_serve_without_a_model_exits_with_a_clear_error(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ASR_MODEL": str(tmp_path / "missing.pt")}
    run = subprocess.run([sys.executable, "-m", "asr.cli", "serve", "--port", "9"], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=120)
    assert run.returncode == 2
    assert "asr serve: error: ASR_MODEL=" in run.stderr and "missing.pt: no such model file" in run.stderr


class FakeRecognizer:
    """Stands in for asr.api.Recognizer: 'transcribes' arrays to their first sample, fails on NaN,
    and records the batch sizes it was called with."""

    def __init__(self, delay: float = 0.0):
        self.calls: list[int] = []
        self.delay = delay

    def transcribe(self, audio):
        items = audio if isinstance(audio, list) else [audio]
        self.calls.append(len(items))
        time.sleep(self.delay)
        if any(np.isnan(samples[0]) for samples, _ in items):
            raise ValueError("bad samples")
        texts = [str(float(samples[0])) for samples, _ in items]
        return texts if isinstance(audio, list) else texts[0]


def test_worker_batches_and_isolates_a_failing_request():
    import asyncio

    from asr.serving.http import BatchWorker

    async def scenario():
        recognizer = FakeRecognizer(delay=0.05)
        worker = BatchWorker(recognizer, ServeConfig(max_batch=8, batch_wait_ms=20))
        worker.start()
        values = [1.0, 2.0, float("nan"), 4.0]
        outcomes = await asyncio.gather(*(worker.submit(np.array([v], np.float32), 16000) for v in values),
                                        return_exceptions=True)
        await worker.stop()
        return recognizer.calls, outcomes

    calls, outcomes = asyncio.run(scenario())
    assert calls[0] == 4  # one batch of all four, then each alone after it failed
    assert sorted(calls[1:]) == [1, 1, 1, 1]
    assert outcomes[0] == "1.0" and outcomes[1] == "2.0" and outcomes[3] == "4.0"
    assert isinstance(outcomes[2], ValueError)


def test_a_full_queue_answers_503():
    import asyncio

    from asr.serving.http import BatchWorker

    async def scenario():
        worker = BatchWorker(FakeRecognizer(delay=0.3), ServeConfig(max_batch=1, queue_size=1))
        worker.start()
        first = asyncio.ensure_future(worker.submit(np.ones(1, np.float32), 16000))
        await asyncio.sleep(0.1)  # the worker has taken the first request; the queue is empty again
        second = asyncio.ensure_future(worker.submit(np.ones(1, np.float32), 16000))
        await asyncio.sleep(0)
        with pytest.raises(RequestError) as refused:
            await worker.submit(np.ones(1, np.float32), 16000)
        results = await asyncio.gather(first, second)
        await worker.stop()
        return refused.value, results

    refused, results = asyncio.run(scenario())
    assert refused.status == 503 and "busy" in refused.message
    assert int(refused.headers["Retry-After"]) >= 1  # issue 29 row 7: clients are told when to come back
    assert results == ["1.0", "1.0"]


def test_an_oversized_chunked_upload_without_content_length_gets_413(server):
    """The size limit holds while the body streams in, not only from the Content-Length header."""
    import http.client

    port, utts, process = server
    body, content_type = multipart({}, {"file": ("big.wav", b"\0" * int(MAX_UPLOAD_MB * 1e6 * 1.5), "audio/wav")})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        try:
            conn.request("POST", "/v1/audio/transcriptions", body=iter([body[i:i + 65536] for i in range(0, len(body), 65536)]),
                         headers={"Content-Type": content_type}, encode_chunked=True)
        except (BrokenPipeError, ConnectionResetError):
            pass
        response = conn.getresponse()
        assert response.status == 413
        assert "larger than the limit of 1 MB" in json.loads(response.read())["error"]["message"]
    finally:
        conn.close()
    assert process.poll() is None
    assert transcribe(port, Path(utts[0].audio).read_bytes())[0] == 200


def test_the_openai_client_works_against_the_server(server, tmp_path):
    """With the `openai` package installed (not a dependency; checked with openai 3.57), its own
    client reads every response_format and raises BadRequestError with our message."""
    openai = pytest.importorskip("openai")
    port, utts, _ = server
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
    path = Path(utts[0].audio)
    with path.open("rb") as f:
        assert client.audio.transcriptions.create(model="whisper-1", file=f).text == utts[0].text
    for fmt in ("text", "srt", "vtt"):
        with path.open("rb") as f:
            assert utts[0].text in client.audio.transcriptions.create(model="whisper-1", file=f, response_format=fmt)
    with path.open("rb") as f:
        verbose = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="verbose_json",
                                                     timestamp_granularities=["word"])
    assert [w.word for w in verbose.words] == utts[0].text.split() and verbose.duration == pytest.approx(utts[0].duration)
    with pytest.raises(openai.BadRequestError, match="not a readable audio file \\(Format not recognised"):
        client.audio.transcriptions.create(model="whisper-1", file=("x.wav", b"not audio"))


# --- issue 29: a server fit to be exposed -----------------------------------------------------------

API_KEY = "test-key-29"
GOOD_ORIGIN = "http://good.example"


@pytest.fixture(scope="module")
def guarded(synth_model, tmp_path_factory):
    """(port, utterances, log path) of a server with an API key, one allowed origin, a small sample
    limit and 1 s header and body timeouts."""
    checkpoint, manifest = synth_model
    log = tmp_path_factory.mktemp("guarded") / "server.log"
    process, port = start_server(checkpoint, log, "--api-key", API_KEY, "--allow-origin", GOOD_ORIGIN + "/",
                                 "--max-samples", "1000000", "--header-timeout", "1", "--body-timeout", "1")
    yield port, read_manifest(manifest), log
    stop_server(process)


def post(port: int, data: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], dict]:
    body, content_type = multipart({}, {"file": ("speech.wav", data, "audio/wav")})
    status, got, answer = exchange(port, "POST", "/v1/audio/transcriptions", body, {"Content-Type": content_type, **headers})
    return status, got, json.loads(answer)


def silent_flac(channels: int, rate: int, seconds: int) -> bytes:
    """Silence as 16-bit FLAC (almost nothing once compressed), by scripts/serve_upload_memory.py."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("serve_upload_memory", ROOT / "scripts" / "serve_upload_memory.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script.silent_flac(channels, rate, seconds)


def test_decoded_samples_are_bounded_from_the_header_before_decoding(monkeypatch):
    """Issue 29 row 2: 80 s of 8-channel 96 kHz FLAC silence is 50 kB, within the upload and duration
    limits, but 61 M samples (246 MB as float32): refused by the default limit from the header alone."""
    import asr.serving.http as served

    data = silent_flac(8, 96000, 80)
    assert len(data) < 100_000
    monkeypatch.setattr(served.soundfile, "read", lambda *a, **k: pytest.fail("decoded despite the header"))
    with pytest.raises(RequestError) as refused:
        decode_upload(data, "loud.flac", ServeConfig())
    assert refused.value.status == 413 and refused.value.param == "file"
    assert "'loud.flac' would decode to 8 channel(s) x 7,680,000 frames at 96000 Hz = 61,440,000 samples " \
           "(246 MB as float32), over the limit of 57,600,000 samples per request (asr serve --max-samples)" \
           in refused.value.message
    monkeypatch.undo()
    samples, rate = decode_upload(silent_flac(2, 16000, 3), "ok.flac", ServeConfig(max_samples=96_000))
    assert samples.shape == (48000, 2) and rate == 16000  # exactly at the limit: decoded


def test_the_sample_limit_is_an_openai_error_from_the_server(guarded):
    port, utts, _ = guarded
    status, _, answer = post(port, silent_flac(4, 48000, 6), {"Authorization": f"Bearer {API_KEY}"})
    assert status == 413 and answer["error"]["param"] == "file" and "1,152,000 samples" in answer["error"]["message"]


def test_the_api_key_is_required_as_a_bearer_token(guarded):
    """Issue 29 row 6: with --api-key, /v1/ answers 401 in OpenAI's shape without the key or with
    another; the page and /health stay open (the page needs /health to show the key field)."""
    port, utts, _ = guarded
    audio = Path(utts[0].audio).read_bytes()
    for headers, problem in (({}, "no API key was sent"), ({"Authorization": "Bearer wrong"}, "not valid"),
                             ({"Authorization": API_KEY}, "not valid"), ({"Authorization": f"Basic {API_KEY}"}, "not valid")):
        status, got, answer = post(port, audio, headers)
        assert status == 401 and got["www-authenticate"].startswith("Bearer")
        assert answer["error"]["code"] == "invalid_api_key" and problem in answer["error"]["message"]
        assert "Authorization: Bearer <key>" in answer["error"]["message"]
    status, _, answer = post(port, audio, {"Authorization": f"Bearer {API_KEY}"})
    assert status == 200 and answer["text"] == utts[0].text
    status, _, body = exchange(port, "GET", "/health")
    assert status == 200 and json.loads(body)["api_key_required"] is True
    assert exchange(port, "GET", "/")[0] == 200


def test_requests_from_other_origins_are_refused_unless_allowed(server, guarded):
    """Issue 29 row 6: a page on evil.example cannot drive a local server (a multipart POST needs no
    CORS preflight, so the server itself must refuse it); the server's own page and allowed origins can."""
    for port, utts, key in ((server[0], server[1], {}), (guarded[0], guarded[1], {"Authorization": f"Bearer {API_KEY}"})):
        audio = Path(utts[0].audio).read_bytes()
        for evil in ("http://evil.example", "null", f"http://localhost.evil.example:{port}", f"http://127.0.0.1:{port + 1}"):
            status, got, answer = post(port, audio, {"Origin": evil, **key})
            assert status == 403 and answer["error"]["code"] == "origin_not_allowed", evil
            assert "access-control-allow-origin" not in got
            assert (f"--allow-origin {evil}" in answer["error"]["message"]) == (evil != "null")
        status, got, answer = post(port, audio, {"Origin": f"http://127.0.0.1:{port}", **key})  # the server's own page
        assert status == 200 and answer["text"] == utts[0].text
        preflight = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
        assert exchange(port, "OPTIONS", "/v1/audio/transcriptions", None, preflight)[0] == 403
    port, utts, _ = guarded
    status, got, answer = post(port, Path(utts[0].audio).read_bytes(), {"Origin": GOOD_ORIGIN, **key})
    assert status == 200 and got["access-control-allow-origin"] == GOOD_ORIGIN and answer["text"] == utts[0].text
    preflight = {"Origin": GOOD_ORIGIN, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization"}
    status, got, _ = exchange(port, "OPTIONS", "/v1/audio/transcriptions", None, preflight)
    assert status == 204 and got["access-control-allow-origin"] == GOOD_ORIGIN
    assert "Authorization" in got["access-control-allow-headers"] and "POST" in got["access-control-allow-methods"]


def trickle(port: int, data: bytes, at_once: bytes = b"", every: float = 0.2) -> tuple[int, bytes]:
    """Send `at_once`, then `data` a byte at a time, `every` seconds apart, reading whatever the server
    answers: (bytes of `data` sent when the server closed the connection, its answer)."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(at_once)
        conn.settimeout(every)
        answer = b""
        for sent in range(len(data)):
            try:
                conn.sendall(data[sent:sent + 1])
                chunk = conn.recv(65536)
            except socket.timeout:
                continue
            except (BrokenPipeError, ConnectionResetError):
                return sent, answer
            if not chunk:
                return sent, answer
            answer += chunk
        return len(data), answer


def test_a_slow_loris_connection_is_closed_with_408(guarded):
    """Issue 29 row 7: a client sending its headers (then its body) a byte at a time is answered 408
    and cut off at --header-timeout (--body-timeout) 1 s, long before it has sent everything (100
    bytes 0.2 s apart take 20 s); the server keeps serving."""
    port, utts, _ = guarded
    headers = (f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {API_KEY}\r\n"
               "Content-Type: multipart/form-data; boundary=x\r\nX-Padding: " + "a" * 100 + "\r\n\r\n").encode()
    sent, answer = trickle(port, headers)
    assert sent < len(headers) and answer.startswith(b"HTTP/1.1 408 ")
    assert b'"headers"' not in answer and b"(headers)" in answer
    body = b"--x\r\n" * 20
    with_length = headers.replace(b"X-Padding", b"Content-Length: %d\r\nX-Padding" % len(body))
    sent, answer = trickle(port, body, at_once=with_length)
    assert sent < len(body) and answer.startswith(b"HTTP/1.1 408 ") and b"(body)" in answer
    status, _, answer = post(port, Path(utts[0].audio).read_bytes(), {"Authorization": f"Bearer {API_KEY}"})
    assert status == 200 and answer["text"] == utts[0].text


def test_a_client_hanging_up_mid_upload_is_one_log_line(guarded):
    """Issue 29 row 7: an aborted upload is logged once, in one line, without a traceback."""
    import socket

    port, utts, log = guarded
    body, content_type = multipart({}, {"file": ("speech.wav", Path(utts[0].audio).read_bytes(), "audio/wav")})
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}"
                     f"\r\nAuthorization: Bearer {API_KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                     + body[:len(body) // 2])
        time.sleep(0.2)  # the server is reading the body when the client goes
    line = "closed the connection before its request was complete"
    deadline = time.monotonic() + 10
    while line not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    text = log.read_text()
    assert text.count(line) == 1 and "Traceback" not in text and "ERROR" not in text
    status, _, answer = post(port, Path(utts[0].audio).read_bytes(), {"Authorization": f"Bearer {API_KEY}"})
    assert status == 200


def test_the_port_is_checked_before_the_model_loads_and_exposure_without_a_key_warns(tmp_path):
    """Issue 29 row 7: a port in use is reported at once (the model, missing here, is never reached);
    row 6: listening beyond loopback without a key warns. The port is held, so nothing is served."""
    import socket

    env = {**os.environ, "PYTHONPATH": str(ROOT), "ASR_API_KEY": ""}
    port = free_port()
    for host in ("127.0.0.1", "0.0.0.0"):
        with socket.socket() as taken:
            taken.bind((host, port))
            taken.listen(1)
            run = subprocess.run([sys.executable, "-m", "asr.cli", "serve", "--model", str(tmp_path / "missing.pt"),
                                  "--host", host, "--port", str(port)], capture_output=True, text=True, env=env,
                                 cwd=ROOT, timeout=120)
        assert run.returncode == 2 and "missing.pt" not in run.stderr
        assert f"asr serve: error: cannot listen on {host}:{port}: Address already in use; another program is using " \
               "it" in run.stderr
        warned = f"asr serve: warning: listening on {host}, beyond this machine, without an API key" in run.stderr
        assert warned == (host == "0.0.0.0")


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.8.0.1", True), ("::1", True), ("[::1]", True),
                                            ("localhost", True), ("0.0.0.0", False), ("::", False),
                                            ("192.168.1.5", False), ("example.org", False)])
def test_is_loopback(host, loopback):
    from asr.serving.http import is_loopback

    assert is_loopback(host) == loopback


def test_same_origin_compares_scheme_default_ports_host_and_port():
    from asr.serving.http import same_origin

    assert same_origin("http://127.0.0.1:8000", "127.0.0.1:8000")
    assert same_origin("http://example.org", "example.org") and same_origin("http://example.org", "example.org:80")
    # Behind a TLS proxy the Host header leaves out 443, the default port of the page's scheme.
    assert same_origin("https://example.org", "example.org:443") and same_origin("https://example.org", "example.org")
    assert not same_origin("https://example.org", "example.org:80")
    assert not same_origin("http://127.0.0.1:8001", "127.0.0.1:8000")
    assert not same_origin("null", "127.0.0.1:8000") and not same_origin("file://", "127.0.0.1:8000")
    assert not same_origin("http://127.0.0.1:8000", "127.0.0.1:bad") and not same_origin("http://x:bad", "x")


def test_a_loopback_server_without_a_key_answers_only_its_own_host_names(server):
    """DNS rebinding: a page on evil.example, its name pointed at 127.0.0.1, is same-origin for the
    browser (Origin and Host both evil.example), so a keyless loopback server refuses Host names that
    are not this machine's; 'localhost' and '127.0.0.1' work."""
    port, utts, _ = server
    audio = Path(utts[0].audio).read_bytes()
    status, _, answer = post(port, audio, {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"})
    assert status == 403 and answer["error"]["code"] == "host_not_allowed"
    assert "--allow-host evil.example" in answer["error"]["message"]
    assert exchange(port, "GET", "/health", None, {"Host": "evil.example"})[0] == 403
    for name in (f"localhost:{port}", f"127.0.0.1:{port}"):
        status, _, answer = post(port, audio, {"Host": name, "Origin": f"http://{name}"})
        assert status == 200 and answer["text"] == utts[0].text
