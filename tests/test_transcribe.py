"""asr.checkpoint.load_model and asr.transcribe: a checkpoint round trip, and transcribing files and
folders where some files are unreadable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

from asr.audio import load_audio  # noqa: E402
from asr.checkpoint import load_model, read_checkpoint, save_checkpoint  # noqa: E402
from asr.config import load_config  # noqa: E402

from asr.model import CTCModel  # noqa: E402
from asr.text import CharTokenizer  # noqa: E402
from asr.transcribe import Pipeline, Transcript, expand_paths, transcribe_files, transcribe_waves  # noqa: E402

CPU = torch.device("cpu")
OVERRIDES = ["model.subsampling=stack", "model.subsampling_factor=4", "model.hidden_size=32", "model.num_layers=2"]


def make_model():
    """A random small model with non-trivial normalizer statistics and a scaled-up output layer, so
    transcripts vary between inputs."""
    config = load_config(None, OVERRIDES)
    tokenizer = CharTokenizer()
    torch.manual_seed(0)
    model = CTCModel(config.features, config.model, len(tokenizer)).eval()
    with torch.no_grad():
        n_mels = config.features.n_mels
        model.normalizer.set_stats(torch.linspace(-9.0, -4.0, n_mels), torch.linspace(2.0, 3.0, n_mels))
        model.output.weight.mul_(8)
    return model, tokenizer, config


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, CTCModel, CharTokenizer]:
    model, tokenizer, config = make_model()
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, {"config": config.to_dict(), "tokenizer": tokenizer.to_dict(), "model": model.state_dict()})
    return path, model, tokenizer


@pytest.fixture(scope="module")
def loaded(checkpoint):
    model, tokenizer, config = load_model(checkpoint[0], CPU)
    return model, tokenizer


def chirp(seconds: float, sr: int, f0: float = 150.0, f1: float = 3000.0, seed: int = 0, noise: float = 0.02) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    noise = np.random.default_rng(seed).standard_normal(t.shape[0]) * noise
    return (0.4 * np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t * t / (2 * seconds))) + noise).astype(np.float32)


# --------------------------------------------------------------------------- load_model


def test_load_model_round_trip(checkpoint, loaded):
    path, model, tokenizer = checkpoint
    model2, tokenizer2 = loaded
    assert not model2.training
    assert tokenizer2.symbols == tokenizer.symbols
    state, state2 = model.state_dict(), model2.state_dict()
    assert state.keys() == state2.keys()
    for key in state:
        assert torch.equal(state[key], state2[key]), key
    g = torch.Generator().manual_seed(0)
    waves = torch.randn(3, 8000, generator=g) * 0.1
    lengths = torch.tensor([8000, 5000, 1600])
    with torch.no_grad():
        out, out_len = model(waves, lengths)
        out2, out_len2 = model2(waves, lengths)
    assert torch.equal(out, out2)
    assert torch.equal(out_len, out_len2)


def test_load_model_config(checkpoint):
    _, _, config = load_model(checkpoint[0])
    assert config.model.subsampling == "stack"
    assert config.model.hidden_size == 32
    assert config.to_dict() == load_config(None, OVERRIDES).to_dict()
    assert read_checkpoint(checkpoint[0])["format_version"] == 1


def test_load_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_model(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="junk.pt"):
        load_model(junk)


# --------------------------------------------------------------------------- transcribe_files


@pytest.fixture
def folder(audio, tmp_path) -> Path:
    """tmp_path/in with good files in several formats and rates, a fake x.wav and an ignored .txt."""
    audio.write("in/b.wav", chirp(0.6, 16000, seed=1), 16000)
    audio.write("in/a.flac", chirp(0.4, 16000, 300, 1200, seed=2), 16000)
    stereo = np.stack([chirp(0.5, 44100, seed=3), 0.5 * chirp(0.5, 44100, 500, 900, seed=4)], axis=1)
    audio.write("in/stereo44k.wav", stereo, 44100)
    audio.write("in/tel8k.wav", chirp(0.5, 8000, 200, 3500, seed=5), 8000)
    audio.write("in/sub/c.wav", chirp(0.3, 16000, 1000, 200, seed=6), 16000)
    (tmp_path / "in" / "x.wav").write_text("this is not audio\n")
    (tmp_path / "in" / "notes.txt").write_text("ignored\n")
    return tmp_path / "in"


EXPECTED_ORDER = ["a.flac", "b.wav", "stereo44k.wav", "sub/c.wav", "tel8k.wav", "x.wav"]


def test_expand_paths_sorted_audio_only(folder, tmp_path):
    files = expand_paths([folder, tmp_path / "missing.wav"])
    rel = [p.relative_to(folder).as_posix() for p in files[:-1]]
    assert rel == EXPECTED_ORDER
    assert files[-1] == tmp_path / "missing.wav"  # kept, reported later


def test_transcribe_files_folder_with_bad_files(loaded, folder, tmp_path):
    model, tokenizer = loaded
    missing = tmp_path / "missing.wav"
    results = transcribe_files(model, tokenizer, [folder, missing], CPU)
    assert all(isinstance(r, Transcript) for r in results)
    assert [r.path for r in results] == [str(folder / n) for n in EXPECTED_ORDER] + [str(missing)]
    by_name = {Path(r.path).name: r for r in results}

    for name in ["x.wav", "missing.wav"]:
        r = by_name[name]
        assert r.error, name
        assert r.path in r.error  # the message names the file
        assert r.text == ""
    assert "no such file" in by_name["missing.wav"].error

    good = [r for r in results if Path(r.path).name not in ("x.wav", "missing.wav")]
    assert len(good) == 5
    for r in good:
        assert r.error == ""
        assert isinstance(r.text, str)
    assert sum(bool(r.text) for r in good) >= 4  # the scaled random model says something

    durations = {Path(r.path).name: r.duration for r in good}
    assert durations["b.wav"] == pytest.approx(0.6)
    assert durations["a.flac"] == pytest.approx(0.4)
    assert durations["stereo44k.wav"] == pytest.approx(0.5, abs=1e-3)  # resampled 44.1 kHz -> 16 kHz
    assert durations["tel8k.wav"] == pytest.approx(0.5, abs=1e-3)  # resampled 8 kHz -> 16 kHz
    assert durations["c.wav"] == pytest.approx(0.3)


def test_transcribe_files_text_matches_decoding_each_file_alone(loaded, folder):
    model, tokenizer = loaded
    results = transcribe_files(model, tokenizer, [folder], CPU, batch_seconds=300.0)
    for r in results:
        if r.error:
            continue
        wave = load_audio(r.path, 16000)
        assert r.text == transcribe_waves(model, tokenizer, [wave], CPU)[0], r.path


def test_lm_pipeline_with_decoder_workers_equals_one_process(loaded, tiny_word_lm):
    """The pipeline with beam-lm searching in 2 processes, a batch's search overlapping the model's
    next batch, gives the transcripts of one process: over several batches, and over a long input cut
    into chunks whose segments are searched together."""
    pytest.importorskip("flashlight.lib.text")
    from asr.decode import make_decoder
    from asr.transcribe import Pipeline

    model, tokenizer = loaded
    lm, lexicon = tiny_word_lm
    inputs = [(chirp(1.0 + 0.3 * i, 16000, f0=100.0 + 40 * i, seed=i, noise=0.2), 16000) for i in range(7)]
    inputs.append((chirp(9.0, 16000, seed=9, noise=0.2), 16000))  # longer than chunk_seconds
    texts = {}
    for workers in (1, 2):
        decoder = make_decoder("beam-lm", tokenizer, lm=lm, lexicon=lexicon, beam_size=10, word_score=3.0,
                               nbest=2, workers=workers)
        pipeline = Pipeline.for_model(model, tokenizer, CPU, decoder, batch_seconds=4.0, chunk_seconds=3.0, chunk_overlap=1.0)
        texts[workers] = [(r.text, r.nbest) for r in pipeline.transcribe(inputs)]
        decoder.close()
    assert sum(bool(text) for text, _ in texts[1]) >= 4  # words were found, so the comparison means something
    assert texts[2] == texts[1]


def test_transcribe_files_resamples_and_mixes_down(loaded, audio):
    model, tokenizer = loaded
    mono16 = chirp(0.5, 16000, noise=0.0)
    # Left and right average to the same chirp.
    stereo44 = np.stack([1.5 * chirp(0.5, 44100, noise=0.0), 0.5 * chirp(0.5, 44100, noise=0.0)], axis=1)
    p16 = audio.write("m16.wav", mono16, 16000, subtype="FLOAT")
    p44 = audio.write("s44.wav", stereo44, 44100, subtype="FLOAT")
    w16, w44 = load_audio(p16, 16000), load_audio(p44, 16000)
    assert w44.shape == w16.shape == (8000,)
    assert (w44 - w16)[50:-50].abs().max() < 0.02  # mixed down to mono and resampled to 16 kHz
    results = transcribe_files(model, tokenizer, [p16, p44], CPU)
    assert [r.error for r in results] == ["", ""]
    assert results[1].duration == pytest.approx(0.5)


def test_transcribe_files_given_order_and_explicit_files(loaded, folder):
    model, tokenizer = loaded
    paths = [folder / "tel8k.wav", folder / "a.flac", folder / "x.wav", folder / "b.wav"]
    results = transcribe_files(model, tokenizer, paths, CPU, batch_seconds=0.5)
    assert [r.path for r in results] == [str(p) for p in paths]
    assert [bool(r.error) for r in results] == [False, False, True, False]
    # Same texts as from the whole folder in one big batch.
    folder_results = {r.path: r.text for r in transcribe_files(model, tokenizer, [folder], CPU, batch_seconds=300.0)}
    for r in results:
        if not r.error:
            assert r.text == folder_results[r.path]


def test_transcribe_files_all_bad(loaded, tmp_path):
    model, tokenizer = loaded
    bad = tmp_path / "bad.flac"
    bad.write_bytes(b"\x00" * 100)
    results = transcribe_files(model, tokenizer, [bad, tmp_path / "nope.wav"], CPU)
    assert len(results) == 2
    assert all(r.error and r.path in r.error and r.text == "" for r in results)


def test_transcribe_files_empty_audio_file(loaded, audio):
    model, tokenizer = loaded
    empty = audio.write("empty.wav", np.zeros(0, dtype=np.float32), 16000)
    good = audio.write("good.wav", chirp(0.3, 16000), 16000)
    results = transcribe_files(model, tokenizer, [empty, good], CPU)
    assert results[0].error and str(empty) in results[0].error
    assert results[1].error == "" and isinstance(results[1].text, str)


def test_long_file_progress_bar_only_when_asked(loaded, audio, capsys):
    """A long file's chunks advance a progress bar on stderr (seconds of audio done) when asked, and
    nothing is written otherwise; the transcript is the same."""
    from asr.transcribe import Pipeline

    pipeline = Pipeline.for_model(*loaded, CPU, chunk_seconds=30.0, chunk_overlap=4.0)
    path = audio.write("long.wav", chirp(70.0, 16000), 16000)
    quiet, duration = pipeline.long_log_probs(path)
    assert capsys.readouterr().err == ""
    shown, _ = pipeline.long_log_probs(path, progress=True)
    err = capsys.readouterr().err
    assert "long.wav" in err and "/70" in err
    assert np.array_equal(quiet, shown) and duration == pytest.approx(70.0)


def test_cli_progress_only_on_a_terminal_without_quiet(monkeypatch):
    import argparse

    from asr.cli import show_progress

    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    assert show_progress(argparse.Namespace(quiet=False))
    assert not show_progress(argparse.Namespace(quiet=True))
    monkeypatch.setattr("sys.stderr.isatty", lambda: False)
    assert not show_progress(argparse.Namespace(quiet=False))


# --------------------------------------------------------------------------- one pipeline, four callers


def test_cli_api_server_and_onnx_give_the_same_words_on_ten_minutes(synth_model, tmp_path, capsys):
    """`asr transcribe`, `asr.load().transcribe`, `asr serve` and the ONNX runtime on one 10-minute file
    (read in 30 s chunks) with the same model and settings: the same transcript and the same word
    start and end times. Confidence is compared exactly between the three torch paths; the ONNX graph's
    log-probs differ from torch's by float rounding (~1e-4, tests/test_onnx.py), so its word
    confidences (means of posteriors, rounded to 3 decimals) may differ in the last decimal."""
    import json

    import soundfile

    pytest.importorskip("onnxruntime")
    pytest.importorskip("starlette")
    import asr
    from asr.cli import main as asr_main
    from asr.serving.onnx_runtime import OnnxRecognizer
    from asr.score import score
    from server_process import request, start_server, stop_server
    from synth import TRANSCRIPTS, synth_utterance

    checkpoint, _ = synth_model
    words = " ".join(TRANSCRIPTS).split()
    rng = np.random.default_rng(0)
    text = " ".join(rng.choice(words, size=1150))
    wave = synth_utterance(text, seed=5)
    assert 600 <= wave.shape[0] / 16000 < 700
    path = tmp_path / "ten_minutes.flac"
    soundfile.write(path, wave, 16000)

    assert asr_main(["transcribe", "-m", str(checkpoint), "--format", "json", "--timestamps", "--decoder", "greedy",
                     "--quiet", str(path)]) == 0
    cli = json.loads(capsys.readouterr().out)
    api = asr.load(checkpoint, decoder="greedy").transcribe(str(path))

    process, port = start_server(checkpoint, tmp_path / "serve.log", "--decoder", "greedy", "--max-audio-seconds", "700")
    try:
        boundary = "pipelinetest"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"response_format\"\r\n\r\nverbose_json\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"ten.flac\"\r\n"
                "Content-Type: audio/flac\r\n\r\n").encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
        status, _, answer = request(port, "POST", "/v1/audio/transcriptions", body,
                                    f"multipart/form-data; boundary={boundary}", timeout=600)
    finally:
        stop_server(process)
    assert status == 200, answer
    served = json.loads(answer)

    onnx_path = tmp_path / "model.onnx"
    assert asr_main(["export", "onnx", str(checkpoint), "--out", str(onnx_path)]) == 0
    [onnx] = OnnxRecognizer(onnx_path, threads=1).transcribe_files([path], timestamps=True)

    times = [(w["word"], w["start"], w["end"]) for w in cli["words"]]
    assert api.text == served["text"] == onnx.text == cli["text"]
    assert [(w.word, w.start, w.end) for w in api.words] == times
    assert [(w["word"], w["start"], w["end"]) for w in served["words"]] == times
    assert [(w.word, w.start, w.end) for w in onnx.words] == times
    assert [w.confidence for w in api.words] == [w["confidence"] for w in cli["words"]] == \
        [w["confidence"] for w in served["words"]]
    assert max(abs(w.confidence - c["confidence"]) for w, c in zip(onnx.words, cli["words"])) <= 0.002
    starts = [start for _, start, _ in times]
    assert starts == sorted(starts)  # the words of all 20 chunks, in order
    assert cli["duration"] == pytest.approx(wave.shape[0] / 16000, abs=1e-3) and starts[-1] > 590
    # What they agree on is speech recognised: the fixture model, trained on eight short files, runs
    # many words together (WER 83%), but gets the letters (measured: 2.5% letter errors, spaces aside).
    assert score({"f": text.replace(" ", "")}, {"f": cli["text"].replace(" ", "")}).cer < 5


# --------------------------------------------------------------------------- silence (issue 29)


class LettersEverywhere:
    """An acoustic model that hears a word in every 4 frames of anything, silence included, as the
    shipped model does on silence ("ononaldodyod ododo ..."): only the silence gate can empty its
    transcripts. Counts the audio it is given."""

    sample_rate, samples_per_frame, min_samples = 16000, 320, 320

    def __init__(self, tokenizer: CharTokenizer):
        self.tokenizer, self.samples_seen = tokenizer, 0

    def log_probs(self, waves):
        out = []
        for wave in waves:
            self.samples_seen += wave.shape[0]
            frames = np.full((-(-wave.shape[0] // 320), len(self.tokenizer)), -20.0, np.float32)
            frames[:, self.tokenizer.blank] = -1.0
            frames[0::4, self.tokenizer.encode("a")[0]] = 0.0
            frames[2::4, self.tokenizer.word_separator] = 0.0
            out.append(frames)
        return out


def gated_pipeline(**settings):
    from asr.decode import GreedyDecoder
    from asr.transcribe import Pipeline

    tokenizer = CharTokenizer()
    return Pipeline(LettersEverywhere(tokenizer), tokenizer, GreedyDecoder(tokenizer), chunk_seconds=30,
                    chunk_overlap=4, **settings)


def silences(seconds: float) -> dict[str, np.ndarray]:
    """The non-speech of issue 29 at 16 kHz: digital silence, +-1 LSB of 16-bit dither, 1e-4 RMS noise."""
    rng = np.random.default_rng(0)
    n = int(seconds * 16000)
    return {"zeros": np.zeros(n, np.float32), "dither": (rng.integers(-1, 2, n) / 32768).astype(np.float32),
            "noise": (1e-4 * rng.standard_normal(n)).astype(np.float32)}


@pytest.mark.parametrize("seconds", [10.0, 590.0])
def test_silence_dither_and_a_noise_floor_give_no_words(tmp_path, seconds):
    """10 s (read whole) and 590 s (read in chunks), as files and as arrays: empty transcripts, each
    with its duration. Without the gate the same model gives words for every one."""
    import soundfile

    inputs = []
    for name, wave in silences(seconds).items():
        soundfile.write(tmp_path / f"{name}.flac", wave, 16000, subtype="PCM_16")
        inputs += [str(tmp_path / f"{name}.flac"), (wave, 16000)]
    pipeline = gated_pipeline()
    results = pipeline.transcribe(inputs, timestamps=True)
    assert [(r.error, r.text, r.words) for r in results] == [("", "", [])] * len(inputs)
    assert [r.duration for r in results] == [pytest.approx(seconds)] * len(inputs)
    if seconds <= pipeline.chunk_seconds:
        assert pipeline.acoustic.samples_seen == 0  # short silent inputs skip the model
    ungated = gated_pipeline(silence_dbfs=-np.inf, relative_silence_db=np.inf).transcribe(inputs)
    assert all(len(r.text.split()) >= seconds * 10 for r in ungated)


def test_speech_loud_enough_is_transcribed_and_long_silences_inside_a_file_are_not(tmp_path):
    """A 70 s file: 10 s of a -9 dBFS tone, 40 s of dither, 10 s of tone, 10 s of noise 51 dB below
    the tone (above SILENCE_DBFS, but a pause relative to the file). Words come only from the tones."""
    import soundfile

    rng = np.random.default_rng(1)
    t = np.arange(10 * 16000) / 16000
    tone = (0.5 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    hiss = (10 ** ((-9 - 51) / 20) * rng.standard_normal(10 * 16000)).astype(np.float32)
    wave = np.concatenate([tone, silences(40.0)["dither"], tone, hiss])
    soundfile.write(tmp_path / "mixed.wav", wave, 16000, subtype="FLOAT")
    [result] = gated_pipeline().transcribe([str(tmp_path / "mixed.wav")], timestamps=True)
    [ungated] = gated_pipeline(silence_dbfs=-np.inf, relative_silence_db=np.inf).transcribe([str(tmp_path / "mixed.wav")])
    # A word every 4 frames (80 ms): 125 in each 10 s tone, 875 in all 70 s; letters may still come
    # SILENCE_MARGIN_SECONDS (0.25 s, 3 words) into each silence beside a tone, 4 such edges.
    assert result.error == "" and 250 <= len(result.text.split()) <= 250 + 4 * 4, len(result.text.split())
    assert len(ungated.text.split()) >= 870
    assert result.words and result.words[0].start < 1.0 and any(49.5 < w.start < 51.0 for w in result.words)
    quiet_tone = gated_pipeline().transcribe([(10 ** (-40 / 20) * tone, 16000)])[0]  # -49 dBFS: quiet, not silent
    assert quiet_tone.text


def test_a_flac_of_unknown_length_is_transcribed_like_the_same_flac_with_its_length(loaded, tmp_path):
    """Its header states no length, so it is streamed in chunks (read without seeking); the words and
    duration are the sized file's, where it was "psf_fseek() failed"."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_audio import unsized_flac

    model, tokenizer = loaded
    sized, unsized = unsized_flac(tmp_path, chirp(3.0, 22050, seed=7), 22050)
    a, b = transcribe_files(model, tokenizer, [sized, unsized], CPU, chunk_seconds=30, chunk_overlap=4, timestamps=True)
    assert (a.error, b.error) == ("", "") and a.text and (b.text, b.words, b.duration) == (a.text, a.words, a.duration)


def test_on_done_reports_each_result_once_when_final(loaded, folder, tmp_path):
    """The callback asr.shards saves results by: every position once, each result already final
    (its text is what transcribe returns), batch by batch."""
    model, tokenizer = loaded
    pipeline = Pipeline.for_model(model, tokenizer, CPU, batch_seconds=0.7)  # one or two files per batch
    reported: list[tuple[int, str]] = []
    calls = []

    def on_done(finished):
        calls.append(len(finished))
        reported.extend((i, t.text) for i, t in finished)

    results = pipeline.transcribe([folder, tmp_path / "missing.wav"], on_done=on_done)
    assert sorted(i for i, _ in reported) == list(range(len(results)))
    assert dict(reported) == {i: r.text for i, r in enumerate(results)}
    assert len([n for n in calls if n]) > 2  # more than one batch: results come before the end
