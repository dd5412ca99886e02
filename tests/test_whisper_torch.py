"""asr.frontend.whisper_torch: the CTranslate2 model.bin reader, and Whisper's encoder in PyTorch computing
what CTranslate2 computes from the same weights."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from asr.frontend.whisper_torch import WhisperEncoder, load_whisper_encoder, read_ctranslate2_variables
from conftest import chirp
from encoder_support import needs_encoder

torch.set_num_threads(1)


def _string(text: str) -> bytes:
    data = text.encode("utf-8")
    return struct.pack("<H", len(data) + 1) + data + b"\0"


def write_model_bin(path: Path, variables: dict[str, np.ndarray], version: int = 6) -> Path:
    """A model.bin in CTranslate2's binary format (ctranslate2/specs/model_spec.py `_serialize`)."""
    dtype_ids = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2, np.dtype(np.int32): 3,
                 np.dtype(np.float16): 4}
    out = struct.pack("<I", version) + _string("WhisperSpec") + struct.pack("<II", 3, len(variables))
    for name, value in variables.items():
        value = np.asarray(value)
        out += _string(name) + struct.pack("<B", value.ndim) + struct.pack(f"<{value.ndim}I", *value.shape)
        out += struct.pack("<BI", dtype_ids[value.dtype], value.nbytes) + value.tobytes()
    path.write_bytes(out + struct.pack("<I", 0))  # no aliases
    return path


def tiny_encoder_variables(n_mels: int = 8, dim: int = 12, heads: int = 3, layers: int = 2, positions: int = 50,
                           seed: int = 0) -> dict[str, np.ndarray]:
    """Random float16 weights under CTranslate2's names for a small Whisper encoder (+ a decoder
    variable the reader must skip)."""
    rng = np.random.default_rng(seed)

    def w(*shape):
        return (0.3 * rng.standard_normal(shape)).astype(np.float16)

    v = {"encoder/conv1/weight": w(dim, n_mels, 3), "encoder/conv1/bias": w(dim),
         "encoder/conv2/weight": w(dim, dim, 3), "encoder/conv2/bias": w(dim),
         "encoder/position_encodings/encodings": w(positions, dim),
         "encoder/layer_norm/gamma": w(dim), "encoder/layer_norm/beta": w(dim),
         "encoder/num_heads": np.array(heads, dtype=np.int16), "decoder/embeddings/weight": w(5, dim)}
    for i in range(layers):
        p = f"encoder/layer_{i}/"
        for norm in ("self_attention/layer_norm", "ffn/layer_norm"):
            v[p + norm + "/gamma"], v[p + norm + "/beta"] = w(dim), w(dim)
        for name, (rows, cols) in {"self_attention/linear_0": (3 * dim, dim), "self_attention/linear_1": (dim, dim),
                                   "ffn/linear_0": (4 * dim, dim), "ffn/linear_1": (dim, 4 * dim)}.items():
            v[p + name + "/weight"], v[p + name + "/bias"] = w(rows, cols), w(rows)
    return v


def reference_encoder(v: dict[str, np.ndarray], mel: torch.Tensor, heads: int) -> torch.Tensor:
    """openai/whisper's AudioEncoder written out with plain tensor operations (separate q, k, v
    projections, q and k each scaled by head_dim ** -0.25, as whisper does), on CTranslate2's names.
    (1, n_mels, F) -> (1, ceil(F / 2), D)."""
    t = {k: torch.from_numpy(a.astype(np.float32)) for k, a in v.items() if a.ndim}
    F = torch.nn.functional
    x = F.gelu(F.conv1d(mel, t["encoder/conv1/weight"], t["encoder/conv1/bias"], padding=1))
    x = F.gelu(F.conv1d(x, t["encoder/conv2/weight"], t["encoder/conv2/bias"], stride=2, padding=1)).transpose(1, 2)
    x = x + t["encoder/position_encodings/encodings"][: x.shape[1]]
    dim = x.shape[-1]
    layer = 0
    while f"encoder/layer_{layer}/ffn/linear_0/weight" in t:
        p = f"encoder/layer_{layer}/"
        h = F.layer_norm(x, (dim,), t[p + "self_attention/layer_norm/gamma"], t[p + "self_attention/layer_norm/beta"])
        wq, wk, wv = t[p + "self_attention/linear_0/weight"].split(dim)
        bq, bk, bv = t[p + "self_attention/linear_0/bias"].split(dim)
        scale = (dim // heads) ** -0.25
        q, k, val = ((h @ w_.T + b_).view(1, -1, heads, dim // heads).transpose(1, 2) for w_, b_ in
                     ((wq, bq), (wk, bk), (wv, bv)))
        weights = torch.softmax((q * scale) @ (k * scale).transpose(-1, -2), dim=-1)
        attended = (weights @ val).transpose(1, 2).reshape(1, -1, dim)
        x = x + attended @ t[p + "self_attention/linear_1/weight"].T + t[p + "self_attention/linear_1/bias"]
        h = F.layer_norm(x, (dim,), t[p + "ffn/layer_norm/gamma"], t[p + "ffn/layer_norm/beta"])
        h = F.gelu(h @ t[p + "ffn/linear_0/weight"].T + t[p + "ffn/linear_0/bias"])
        x = x + h @ t[p + "ffn/linear_1/weight"].T + t[p + "ffn/linear_1/bias"]
        layer += 1
    return F.layer_norm(x, (dim,), t["encoder/layer_norm/gamma"], t["encoder/layer_norm/beta"])


def test_reader_returns_the_encoder_variables_as_stored(tmp_path):
    variables = tiny_encoder_variables()
    read = read_ctranslate2_variables(write_model_bin(tmp_path / "model.bin", variables))
    assert set(read) == {k for k in variables if k.startswith("encoder/")}  # the decoder's is skipped
    for name, value in read.items():
        assert value.dtype == variables[name].dtype and np.array_equal(value, variables[name]), name


def test_reader_errors_name_the_file_and_the_problem(tmp_path):
    variables = tiny_encoder_variables()
    other_version = write_model_bin(tmp_path / "v5.bin", variables, version=5)
    with pytest.raises(ValueError, match=r"v5\.bin: CTranslate2 binary version 5"):
        read_ctranslate2_variables(other_version)
    whole = write_model_bin(tmp_path / "model.bin", variables).read_bytes()
    truncated = tmp_path / "truncated.bin"
    for cut in (3, 40, len(whole) // 2):
        truncated.write_bytes(whole[:cut])
        with pytest.raises(ValueError, match=r"truncated\.bin: (truncated|the file ends inside)"):
            read_ctranslate2_variables(truncated)
    bfloat16 = tmp_path / "bf16.bin"
    bfloat16.write_bytes(whole.replace(_string("encoder/conv1/bias") + struct.pack("<BI", 1, 12) + b"\4",
                                       _string("encoder/conv1/bias") + struct.pack("<BI", 1, 12) + b"\5"))
    with pytest.raises(ValueError, match=r"bf16\.bin: variable encoder/conv1/bias has CTranslate2 dtype id 5"):
        read_ctranslate2_variables(bfloat16)


def test_encoder_is_whispers_architecture(tmp_path):
    """The module (fused q/k/v, torch's attention) equals whisper's encoder written out by hand on
    the same weights: both float32 on one machine, so only rounding separates them (~1e-6)."""
    variables = tiny_encoder_variables()
    write_model_bin(tmp_path / "model.bin", variables)
    encoder = load_whisper_encoder(tmp_path)
    mel = torch.randn(1, 8, 37, generator=torch.Generator().manual_seed(1))
    states = encoder.hidden_states(mel)
    assert len(states) == 3 and all(s.shape == (1, 19, 12) for s in states)  # input + 2 blocks; ceil(37 / 2)
    torch.testing.assert_close(encoder(mel), states[-1])
    torch.testing.assert_close(states[-1], reference_encoder(variables, mel, heads=3), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="exceed the encoder's 50 positions"):
        encoder(torch.zeros(1, 8, 101))


def test_loading_the_encoder_leaves_the_random_state_alone(tmp_path):
    """A training run seeds, then builds its model: the encoder it loads (for the first time in the
    process, or not) must not change the head's initial weights."""
    write_model_bin(tmp_path / "model.bin", tiny_encoder_variables())
    before = torch.random.get_rng_state()
    encoder = load_whisper_encoder(tmp_path)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(p.device.type == "cpu" for p in encoder.parameters()) and encoder.positions.device.type == "cpu"


def test_missing_or_foreign_model_bin(tmp_path):
    with pytest.raises(FileNotFoundError, match="no CTranslate2 model.bin"):
        load_whisper_encoder(tmp_path)
    write_model_bin(tmp_path / "model.bin", {"encoder/conv1/weight": np.zeros((4, 2, 3), np.float16)})
    with pytest.raises(ValueError, match="not a Whisper encoder"):
        load_whisper_encoder(tmp_path)


@needs_encoder
def test_torch_encoder_matches_ctranslate2_float32_on_the_installed_model():
    """The installed Whisper encoder in torch against CTranslate2 (float32) on the same model.bin.
    On 20 libri-other dev utterances (scripts/whisper_encoder_check.py, recipes/librispeech/RESULTS.md)
    the largest difference was 8.9e-4 on outputs up to 13 in size, every frame's cosine 1.00000: the
    two sum in other orders in float32. Bounds: 1e-2 and 0.9999, ten times those."""
    import ctranslate2

    from asr.frontend.whisper_numpy import encode_windows, find_encoder, whisper_log_mel

    folder = find_encoder()
    mel = whisper_log_mel(chirp(f0=120.0, f1=3000.0, seconds=3.0))
    engine = ctranslate2.models.Whisper(str(folder), device="cpu", compute_type="float32", intra_threads=1)
    theirs = torch.from_numpy(encode_windows(engine, mel))
    encoder = load_whisper_encoder(folder)
    assert isinstance(encoder, WhisperEncoder) and len(encoder.blocks) == 4  # tiny
    with torch.inference_mode():
        ours = encoder(torch.from_numpy(mel)[None])[0]
    assert ours.shape == theirs.shape == (150, 384)
    assert (ours - theirs).abs().max().item() < 1e-2
    assert torch.nn.functional.cosine_similarity(ours, theirs, dim=1).min().item() > 0.9999


def test_encoder_only_copy_loads_the_same_encoder(tmp_path):
    """write_encoder_only keeps every encoder variable as stored and nothing else; the torch encoder
    built from the copy computes bit for bit what it computes from the whole file."""
    from asr.frontend.whisper_torch import write_encoder_only

    variables = tiny_encoder_variables()
    (tmp_path / "whole").mkdir()
    write_model_bin(tmp_path / "whole" / "model.bin", variables)
    cut = write_encoder_only(tmp_path / "whole", tmp_path / "cut")
    read = read_ctranslate2_variables(cut, prefix="")
    assert list(read) == [name for name in variables if name.startswith("encoder/")]
    for name, value in read.items():
        assert value.dtype == variables[name].dtype and np.array_equal(value, variables[name]), name
    assert cut.stat().st_size < (tmp_path / "whole" / "model.bin").stat().st_size
    assert "whole" in (tmp_path / "cut" / "source.txt").read_text()
    mel = torch.randn(1, 8, 30)
    with torch.no_grad():
        assert torch.equal(load_whisper_encoder(tmp_path / "cut")(mel), load_whisper_encoder(tmp_path / "whole")(mel))


def test_encoder_only_copy_refuses_what_has_no_encoder(tmp_path):
    from asr.frontend.whisper_torch import write_encoder_only

    with pytest.raises(FileNotFoundError, match="no CTranslate2 model.bin"):
        write_encoder_only(tmp_path, tmp_path / "cut")
    write_model_bin(tmp_path / "model.bin", {"decoder/embeddings/weight": np.zeros((2, 3), np.float16)})
    with pytest.raises(ValueError, match="no encoder/ variables"):
        write_encoder_only(tmp_path, tmp_path / "cut")
    assert not (tmp_path / "cut").exists()


@needs_encoder
def test_encoder_only_copy_of_the_installed_model(tmp_path):
    """Whisper tiny.en's encoder alone: every encoder variable as installed, in a file a quarter the
    size (what lets the GPU machine take it along: scripts/gpu_prepare.sh --whisper-encoder)."""
    from asr.frontend.whisper_numpy import find_encoder
    from asr.frontend.whisper_torch import write_encoder_only

    folder = find_encoder()
    cut = write_encoder_only(folder, tmp_path / "encoder")
    whole, alone = read_ctranslate2_variables(folder / "model.bin"), read_ctranslate2_variables(cut, prefix="")
    assert whole.keys() == alone.keys()
    assert all(np.array_equal(whole[name], alone[name]) for name in whole)
    assert cut.stat().st_size < (folder / "model.bin").stat().st_size / 3


def _encoder_checkpoint(path: Path, encoder_id: str) -> Path:
    """A checkpoint whose config names an encoder (all that retarget_encoder reads and rewrites)."""
    from asr.checkpoint import save_checkpoint

    save_checkpoint(path, {"config": {"features": {"frontend": "whisper-torch", "encoder": "/gpu/machine/cut",
                                                   "encoder_id": encoder_id}},
                           "tokenizer": {"kind": "char"}, "model": {"w": torch.ones(2)}})
    return path


def test_retarget_a_model_trained_on_the_cut_encoder(tmp_path):
    """scripts/retarget_encoder.py: a checkpoint naming the cut folder's identity is rewritten to
    name the whole model's, weights untouched; a checkpoint of another encoder, or a target whose
    encoder differs, is refused with the file and the reason."""
    from asr.checkpoint import read_checkpoint
    from asr.frontend.whisper_numpy import encoder_identity
    from asr.frontend.whisper_torch import write_encoder_only

    repo = Path(__file__).resolve().parents[1]
    (tmp_path / "whole").mkdir()
    write_model_bin(tmp_path / "whole" / "model.bin", tiny_encoder_variables())
    write_encoder_only(tmp_path / "whole", tmp_path / "cut")
    trained = _encoder_checkpoint(tmp_path / "gpu.pt", encoder_identity(tmp_path / "cut"))

    def script(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(repo / "scripts" / "retarget_encoder.py"), *args], capture_output=True,
                              text=True, cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)}, timeout=120)

    done = script(str(trained), "--trained-on", str(tmp_path / "cut"), "--encoder", str(tmp_path / "whole"),
                  "--out", str(tmp_path / "here.pt"))
    assert done.returncode == 0, done.stderr
    payload = read_checkpoint(tmp_path / "here.pt")
    assert payload["config"]["features"]["encoder_id"] == encoder_identity(tmp_path / "whole")
    assert payload["config"]["features"]["encoder"] == ""
    assert torch.equal(payload["model"]["w"], torch.ones(2))

    (tmp_path / "other").mkdir()
    write_model_bin(tmp_path / "other" / "model.bin", tiny_encoder_variables(seed=1))
    refused = script(str(trained), "--trained-on", str(tmp_path / "cut"), "--encoder", str(tmp_path / "other"),
                     "--out", str(tmp_path / "x.pt"))
    assert refused.returncode == 1 and "weights differ" in refused.stderr and "other" in refused.stderr
    wrong_source = script(str(trained), "--trained-on", str(tmp_path / "other"), "--encoder", str(tmp_path / "whole"),
                          "--out", str(tmp_path / "x.pt"))
    assert wrong_source.returncode == 1 and "trained on the features of" in wrong_source.stderr
    assert not (tmp_path / "x.pt").exists()
