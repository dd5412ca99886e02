"""Whisper's audio encoder in PyTorch, built from a CTranslate2 model folder's model.bin.

CTranslate2 runs the encoder fast but returns only its last layer, frozen and (on the CPU) int8.
Reading more than the last layer (SUPERB's weighted sum of all layers) or fine-tuning the top
blocks needs the encoder as a torch module: this one has openai/whisper's architecture and takes
its weights from the same model.bin CTranslate2 loads (stored in float16, quantized only at load
time), so the two compute the same function (`scripts/whisper_encoder_check.py` measures how close).

Architecture (openai/whisper `AudioEncoder`): two 3-wide convolutions with GELU (the second of
stride 2), sinusoidal positions (stored in model.bin), pre-LayerNorm blocks of
multi-head self-attention and a 4x GELU MLP, a final LayerNorm. Like `asr.frontend.whisper_numpy`, inputs
are not padded to 30 s: positions are sliced to the input's length, as CTranslate2 does.

model.bin (CTranslate2 binary format 6, `ctranslate2/specs/model_spec.py`): uint32 version, the
spec's name, uint32 revision, uint32 variable count; per variable its name, uint8 rank, uint32 dims,
uint8 dtype id, uint32 byte count, then the bytes; strings are uint16 length (with the NUL), UTF-8,
NUL. Then aliases, which the encoder does not use.

Shapes: log-mel (B, n_mels, F) -> hidden states (B, ceil(F / 2), D), D = 384 for tiny.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np
import torch
from torch import nn

from .logmel import frame_mask

# CTranslate2's DataType enum order (include/ctranslate2/types.h); bfloat16 has no numpy type.
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
SUPPORTED_BINARY_VERSION = 6


def _read_string(f: BinaryIO) -> str:
    (size,) = struct.unpack("<H", f.read(2))
    return f.read(size)[:-1].decode("utf-8")


class _Record(NamedTuple):
    """One variable's entry in a model.bin, up to its data."""

    name: str
    dims: tuple[int, ...]
    dtype_id: int
    header: bytes  # the entry's bytes before the data, as stored


def _read_entries(path: Path, prefix: str) -> tuple[bytes, list[tuple[_Record, bytes]]]:
    """The header of the model.bin at `path` (version, spec name, revision: the bytes before the
    variable count) and (entry, data bytes) of each variable whose name starts with `prefix`, in
    file order; the others are skipped without being read. Raises ValueError naming the file for
    another binary version or a truncated file."""
    kept = []
    with open(path, "rb") as f:
        try:
            (version,) = struct.unpack("<I", f.read(4))
            if version != SUPPORTED_BINARY_VERSION:
                raise ValueError(f"{path}: CTranslate2 binary version {version}; this reader knows version "
                                 f"{SUPPORTED_BINARY_VERSION}")
            _read_string(f)  # the spec's name, e.g. WhisperSpec
            f.read(4)  # revision
            header_end = f.tell()
            (count,) = struct.unpack("<I", f.read(4))
            for _ in range(count):
                entry_start = f.tell()
                name = _read_string(f)
                (rank,) = struct.unpack("<B", f.read(1))
                dims = struct.unpack(f"<{rank}I", f.read(4 * rank))
                dtype_id, size = struct.unpack("<BI", f.read(5))
                if not name.startswith(prefix):
                    f.seek(size, 1)
                    continue
                entry_end = f.tell()
                f.seek(entry_start)
                record = _Record(name, dims, dtype_id, f.read(entry_end - entry_start))
                data = f.read(size)
                if len(data) != size:
                    raise ValueError(f"{path}: the file ends inside variable {name}")
                kept.append((record, data))
            f.seek(0)
            header = f.read(header_end)
        except struct.error:
            raise ValueError(f"{path}: truncated or not a CTranslate2 model.bin") from None
    return header, kept


def read_ctranslate2_variables(path: str | Path, prefix: str = "encoder/") -> dict[str, np.ndarray]:
    """The variables of a CTranslate2 model.bin whose names start with `prefix`, as numpy arrays in
    their stored dtype (the others are skipped without being kept). Raises ValueError naming the file
    for another binary version, an unknown dtype or a truncated file."""
    path = Path(path)
    variables: dict[str, np.ndarray] = {}
    for record, data in _read_entries(path, prefix)[1]:
        if record.dtype_id not in _DTYPES:
            raise ValueError(f"{path}: variable {record.name} has CTranslate2 dtype id {record.dtype_id}, "
                             f"not one of {sorted(_DTYPES)} (float32, int8, int16, int32, float16)")
        variables[record.name] = np.frombuffer(data, dtype=_DTYPES[record.dtype_id]).reshape(record.dims)
    return variables


def write_encoder_only(source: str | Path, out: str | Path) -> Path:
    """Write `out`/model.bin: the CTranslate2 Whisper model.bin of folder `source` cut to its encoder
    (the header and every `encoder/` variable's entry copied byte for byte, in file order; no
    aliases), for the places that cannot take the whole file: the GPU machine takes at most 64 MiB
    along, and tiny.en's model.bin is 72 MiB, its encoder 15.7 MiB. The torch encoder loads the cut
    folder (features.encoder or $ASR_WHISPER_ENCODER) and computes exactly what it computes from
    `source`; CTranslate2 cannot load it (no decoder). Its identity (the file's SHA-256, which
    checkpoints record) is its own: a model trained on it names this file. `out`/source.txt names the
    file it was cut from. Returns the new model.bin's path."""
    from .whisper_numpy import encoder_identity

    source, out = Path(source), Path(out)
    path = source / "model.bin"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no CTranslate2 model.bin in {source}")
    header, kept = _read_entries(path, "encoder/")
    if not kept:
        raise ValueError(f"{path}: no encoder/ variables (not a Whisper model)")
    out.mkdir(parents=True, exist_ok=True)
    target, partial = out / "model.bin", out / "model.bin.partial"
    with open(partial, "wb") as f:
        f.write(header + struct.pack("<I", len(kept)))
        for record, data in kept:
            f.write(record.header + data)
        f.write(struct.pack("<I", 0))  # aliases
    partial.replace(target)
    (out / "source.txt").write_text(f"encoder variables of {path} (encoder {encoder_identity(source)})\n",
                                    encoding="utf-8")
    return target


def same_encoder(a: str | Path, b: str | Path) -> bool:
    """Whether CTranslate2 Whisper folders `a` and `b` hold the same encoder: the same `encoder/`
    variables, equal in dtype, shape and every value (a folder cut by write_encoder_only against the
    model it was cut from), so the same features."""
    first, second = read_ctranslate2_variables(Path(a) / "model.bin"), read_ctranslate2_variables(Path(b) / "model.bin")
    return first.keys() == second.keys() and all(
        first[k].dtype == second[k].dtype and first[k].shape == second[k].shape and np.array_equal(first[k], second[k])
        for k in first)


class Block(nn.Module):
    """Pre-LN transformer block: x + attention(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.attention_norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)  # CTranslate2 fuses Whisper's q, k (no bias: zeros), v
        self.attention_out = nn.Linear(dim, dim)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp_in = nn.Linear(dim, 4 * dim)
        self.mlp_out = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, D) -> (B, T, D). `valid` (B, T) bool, True on real frames: of a batch of padded
        sequences, each frame attends to its own sequence's real frames only, so padding never
        changes them (the padded frames' outputs are meaningless)."""
        b, t, d = x.shape
        q, k, v = self.qkv(self.attention_norm(x)).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        mask = None if valid is None else valid[:, None, None, :]  # (B, heads, queries, keys) by broadcasting
        attended = nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                              attn_mask=mask)
        x = x + self.attention_out(attended.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp_out(nn.functional.gelu(self.mlp_in(self.mlp_norm(x))))


def output_frame_mask(mel_frames: torch.Tensor, frames: int) -> torch.Tensor:
    """(B,) real log-mel frames of padded inputs -> (B, frames) bool, True on the encoder outputs they
    give alone: the first ceil(n / 2) (the second convolution's stride 2, padding 1)."""
    return frame_mask(torch.div(mel_frames + 1, 2, rounding_mode="floor"), frames)


class WhisperEncoder(nn.Module):
    """Whisper's audio encoder (see the module docstring). `forward` gives the last layer;
    `hidden_states` every layer's output, for a weighted sum or the top blocks' fine-tuning."""

    def __init__(self, n_mels: int, dim: int, heads: int, layers: int, max_positions: int):
        super().__init__()
        self.conv1 = nn.Conv1d(n_mels, dim, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(dim, dim, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positions", torch.zeros(max_positions, dim), persistent=True)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.final_norm = nn.LayerNorm(dim)

    def hidden_states(self, mel: torch.Tensor, num_blocks: int | None = None,
                      mel_frames: torch.Tensor | None = None) -> list[torch.Tensor]:
        """(B, n_mels, F) log-mel -> [after the convolutions and positions, after block 1, ...,
        after the last block and the final LayerNorm], each (B, ceil(F / 2), D). The last entry is
        what CTranslate2's `encode` returns. F / 2 may not exceed the stored positions (1500: 30 s).
        With `num_blocks` below the number of blocks: only the states up to that block's output
        (no final LayerNorm), the frozen part under fine-tuned top blocks. `mel_frames` (B,): each
        input's real frames, the rest zero padding; its outputs' real frames (the first ceil(n / 2))
        are then those of the input alone (the second convolution and attention skip the padding)."""
        x = nn.functional.gelu(self.conv1(mel))
        valid = None
        if mel_frames is not None:
            x = x * frame_mask(mel_frames, x.shape[2])[:, None, :]  # what conv2's own zero padding would be
        x = nn.functional.gelu(self.conv2(x)).transpose(1, 2)
        if x.shape[1] > self.positions.shape[0]:
            raise ValueError(f"{x.shape[1]} encoder frames exceed the encoder's {self.positions.shape[0]} positions "
                             "(30 s): cut the log-mel into windows (asr.frontend.whisper_numpy.mel_windows)")
        if mel_frames is not None:
            valid = output_frame_mask(mel_frames, x.shape[1])
        states = [x + self.positions[: x.shape[1]]]
        for block in self.blocks[:num_blocks]:
            states.append(block(states[-1], valid))
        if num_blocks is None or num_blocks >= len(self.blocks):
            states[-1] = self.final_norm(states[-1])
        return states

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, n_mels, F) -> (B, ceil(F / 2), D): the last layer."""
        return self.hidden_states(mel)[-1]


def load_whisper_encoder(folder: str | Path, dtype: torch.dtype = torch.float32) -> WhisperEncoder:
    """The encoder of a CTranslate2 Whisper model folder (as asr.frontend.whisper_numpy.find_encoder gives
    it), its float16 weights converted to `dtype`, in eval mode."""
    path = Path(folder) / "model.bin"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no CTranslate2 model.bin in {folder}")
    v = read_ctranslate2_variables(path)
    try:
        layers = sum(1 for name in v if name.endswith("self_attention/linear_0/weight"))
        dim, n_mels, _ = v["encoder/conv1/weight"].shape
        heads = int(v["encoder/num_heads"])
        # Built without memory or random draws (its weights come from the file): loading an encoder
        # must not move the global RNG, or a training run's initial weights would depend on whether
        # the process had loaded one before.
        with torch.device("meta"):
            encoder = WhisperEncoder(n_mels, dim, heads, layers, v["encoder/position_encodings/encodings"].shape[0])
        state = {"conv1.weight": v["encoder/conv1/weight"], "conv1.bias": v["encoder/conv1/bias"],
                 "conv2.weight": v["encoder/conv2/weight"], "conv2.bias": v["encoder/conv2/bias"],
                 "positions": v["encoder/position_encodings/encodings"],
                 "final_norm.weight": v["encoder/layer_norm/gamma"], "final_norm.bias": v["encoder/layer_norm/beta"]}
        ours = {"attention_norm": "self_attention/layer_norm", "qkv": "self_attention/linear_0",
                "attention_out": "self_attention/linear_1", "mlp_norm": "ffn/layer_norm",
                "mlp_in": "ffn/linear_0", "mlp_out": "ffn/linear_1"}
        for i in range(layers):
            for name, theirs in ours.items():
                norm = theirs.endswith("layer_norm")
                state[f"blocks.{i}.{name}.weight"] = v[f"encoder/layer_{i}/{theirs}/{'gamma' if norm else 'weight'}"]
                state[f"blocks.{i}.{name}.bias"] = v[f"encoder/layer_{i}/{theirs}/{'beta' if norm else 'bias'}"]
    except KeyError as e:
        raise ValueError(f"{path}: not a Whisper encoder (missing variable {e})") from None
    encoder.load_state_dict({k: torch.from_numpy(np.array(a, dtype=np.float32)) for k, a in state.items()}, assign=True)
    return encoder.to(dtype).eval()
