"""The whisper-torch frontend: Whisper's encoder in PyTorch (asr.frontend.whisper_torch), read at
more than its last layer or with its top blocks trained with the head (issue 23, levers 1 and 2).

`features.encoder_layers` chooses the features: "last" (the last layer, float: what CTranslate2
float32 gives, where the whisper frontend gives int8), "weighted" (SUPERB: a softmax-weighted sum
of all layer outputs, its weights trained with the head from equal) or "last2" (the last two layer
outputs concatenated, twice the width). `features.finetune_blocks` = k > 0 (with "last") trains the
top k blocks and the final LayerNorm with the head.

- The frozen part (convolutions, positions and the blocks below the trained ones) is never a
  submodule: it is loaded once per process and device from the installed model.bin (`frozen_encoder`),
  is not in the optimizer, and is not saved: a checkpoint holds only what trains (the top blocks,
  ~1.8 M parameters each for tiny, or the layer weights) and `features.encoder_id`, checked on load
  as for the whisper frontend. A deep copy (EMA weights) shares it.
- Training caches the frozen part's output per utterance (FeatureCache, float16): the state entering
  the first trained block, or the layer outputs the features are made of ((L + 1, T, D) for
  "weighted", (2, T, D) for "last2"). The cache folder is named by the variant as well as the encoder.
- A model that trained k blocks reads as one training more (`grow_trained_blocks`: the blocks it left
  frozen at the encoder's own weights, the same features), as train.init_from does when a run trains
  more blocks than its start; `asr average` mixes runs that trained different numbers of blocks so.
- Inputs over 30 s run window by window (mel_windows), the frozen part as the whisper frontend does;
  the trained blocks see the same windows, all windows of a batch at once with a padding mask, so an
  utterance's features do not depend on what it is batched with.

Shapes: waves (B, S) at 16 kHz -> features (B, T, dim), T = ceil(S // 160 / 2), dim = 384 for tiny
(768 with "last2").
"""

from __future__ import annotations

import copy
import os
import threading
from pathlib import Path

import torch
from torch import nn

from . import FeatureConfig
from .logmel import frame_mask
from .whisper import FeatureCache, check_sample_rate, num_encoder_frames, whisper_log_mel
from .whisper_numpy import (ENCODER_STRIDE, HOP_LENGTH, check_identity, encoder_identity, encoder_windows,
                            find_encoder, log_mel_frames, mel_windows)
from .whisper_torch import WhisperEncoder, load_whisper_encoder, output_frame_mask

_encoders: dict[tuple[str, str], WhisperEncoder] = {}
_encoders_lock = threading.Lock()


def frozen_encoder(folder: Path, device: torch.device) -> WhisperEncoder:
    """The float32 encoder of `folder` on `device`, loaded once per process and device and shared by
    every frontend (and every copy of one); its parameters never require gradients."""
    key = (str(Path(folder).resolve()), str(device))
    with _encoders_lock:
        if key not in _encoders:
            cpu_key = (key[0], "cpu")
            if cpu_key not in _encoders:
                _encoders[cpu_key] = load_whisper_encoder(folder).requires_grad_(False)
            _encoders[key] = copy.deepcopy(_encoders[cpu_key]).to(device)
        return _encoders[key]


class WhisperTorchFrontend(nn.Module):
    """Waveforms -> features from Whisper's encoder in PyTorch (see the module docstring), the
    counterpart of PretrainedEncoder: .dim, .hop_length, .num_frames, .use_cache(folder)."""

    def __init__(self, config: FeatureConfig):
        super().__init__()
        check_sample_rate(config)
        folder = find_encoder(config.encoder)
        check_identity(folder, config.encoder_id)
        if not config.encoder_id:
            config.encoder_id = encoder_identity(folder)  # recorded in the config, so in every checkpoint
        encoder = frozen_encoder(folder, torch.device("cpu"))
        blocks, width = len(encoder.blocks), encoder.conv1.out_channels
        k = config.finetune_blocks
        if k > blocks:
            raise ValueError(f"features.finetune_blocks {k}: the encoder in {folder} has {blocks} blocks")
        self.config = config
        self.folder = folder
        self.n_mels = encoder.conv1.in_channels
        self.layers = config.encoder_layers
        self.finetune_blocks = k
        self.frozen_blocks = blocks - k
        self.dim = 2 * width if self.layers == "last2" else width
        self.hop_length = HOP_LENGTH * ENCODER_STRIDE  # input samples per output frame
        self.variant = f"torch-{self.layers}" + (f"-top{k}" if k else "")
        if k:  # trained copies of the encoder's top blocks and final norm, saved with the head
            self.top_blocks = copy.deepcopy(encoder.blocks[self.frozen_blocks:]).requires_grad_(True)
            self.top_norm = copy.deepcopy(encoder.final_norm).requires_grad_(True)
        if self.layers == "weighted":  # softmax weights over the L + 1 layer outputs, equal at first
            self.layer_weights = nn.Parameter(torch.zeros(blocks + 1))
        self.cache: FeatureCache | None = None

    def use_cache(self, folder: str | os.PathLike | None = None) -> None:
        """Remember every utterance's frozen-part output (in memory, and in `folder` when given)."""
        self.cache = FeatureCache(self.config.encoder_id, folder, self.variant)

    def num_frames(self, num_samples: torch.Tensor) -> torch.Tensor:
        return num_encoder_frames(num_samples)

    @torch.no_grad()
    def frozen_states(self, wave: torch.Tensor) -> torch.Tensor:
        """(S,) -> the frozen part's output for one utterance, window by window: (T, D) for "last"
        (the state entering the first trained block when some train), (L + 1, T, D) for "weighted",
        (2, T, D) for "last2"."""
        mel = whisper_log_mel(wave, self.n_mels).to(wave.device)
        encoder = frozen_encoder(self.folder, wave.device)
        pieces = []
        for start, end in mel_windows(mel.shape[1]):
            states = encoder.hidden_states(mel[None, :, start:end], self.frozen_blocks)
            if self.layers == "last":
                pieces.append(states[-1][0])
            else:
                pieces.append(torch.stack(states if self.layers == "weighted" else states[-2:])[:, 0])
        return torch.cat(pieces, dim=-2)

    def encode_one(self, wave: torch.Tensor) -> torch.Tensor:
        """frozen_states(wave), from the cache when training keeps one (PretrainedEncoder.encode_one's counterpart,
        which scripts/cache_features.py calls to fill the cache ahead of training)."""
        if self.cache is None:
            return self.frozen_states(wave)
        return self.cache.fetch(wave, lambda: self.frozen_states(wave))

    def forward(self, waves: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """waves: (B, S) float, lengths: (B,) samples -> (B, T, dim) float32 features, (B,) frames."""
        samples = [int(n) for n in lengths.tolist()]
        frozen = [self.encode_one(waves[i, :n]).to(waves.device, torch.float32) for i, n in enumerate(samples)]
        if self.layers == "weighted":
            weights = self.layer_weights.softmax(0)[:, None, None]
            outputs = [(weights * states).sum(0) for states in frozen]
        elif self.layers == "last2":
            outputs = [torch.cat(tuple(states), dim=-1) for states in frozen]
        elif self.finetune_blocks:
            outputs = self.run_top_blocks(frozen, samples)
        else:
            outputs = frozen
        frames = torch.tensor([o.shape[0] for o in outputs], dtype=torch.long, device=lengths.device)
        return nn.utils.rnn.pad_sequence(outputs, batch_first=True), frames

    def window_features(self, mel: torch.Tensor, mel_frames: torch.Tensor) -> torch.Tensor:
        """The whole frontend over a padded batch of log-mel windows at once, the frozen part and the
        trained one alike (the ONNX graph's path, asr.serving.onnx_export; training and torch inference
        keep the frozen part apart, to cache it): (W, n_mels, F) windows of at most 30 s (each
        utterance's mel_windows), (W,) real frames of each -> (W, ceil(F / 2), dim) features, those
        past a window's encoder_frames(mel_frames) meaningless. Equal to forward's, window by window,
        within float rounding."""
        encoder = frozen_encoder(self.folder, mel.device)
        states = encoder.hidden_states(mel, self.frozen_blocks, mel_frames)
        if self.layers == "weighted":
            return (self.layer_weights.softmax(0)[:, None, None, None] * torch.stack(states)).sum(0)
        if self.layers == "last2":
            return torch.cat(states[-2:], dim=-1)
        x = states[-1]
        if self.finetune_blocks:
            valid = output_frame_mask(mel_frames, x.shape[1])
            for block in self.top_blocks:
                x = block(x, valid)
            x = self.top_norm(x)
        return x

    def run_top_blocks(self, states: list[torch.Tensor], num_samples: list[int]) -> list[torch.Tensor]:
        """The trained top blocks and final norm over each utterance's (T, D) frozen states, in the
        encoder's windows: every window of the batch in one padded batch, each attending to itself."""
        windows = [[states[i][start:end] for start, end in encoder_windows(log_mel_frames(n))]
                   for i, n in enumerate(num_samples)]
        pieces = [w for utterance in windows for w in utterance]
        x = nn.utils.rnn.pad_sequence(pieces, batch_first=True)
        valid = frame_mask(torch.tensor([p.shape[0] for p in pieces], device=x.device), x.shape[1])
        for block in self.top_blocks:
            x = block(x, valid)
        x = self.top_norm(x)
        outputs, row = [], 0
        for utterance in windows:
            outputs.append(torch.cat([x[row + j, : w.shape[0]] for j, w in enumerate(utterance)]))
            row += len(utterance)
        return outputs


# ---------------------------------------------------------------------------------------------------
# A model's weights as those of one that trains more of the encoder.

TOP_BLOCKS = "frontend.top_blocks."


def renumber_top_blocks(weights: dict[str, torch.Tensor], shift: int) -> dict[str, torch.Tensor]:
    """A model's weights with 'frontend.top_blocks.{i}.*' renamed '{i + shift}' (other keys as they
    are): the k blocks a model trained, as the top k of a model that trains k + shift."""
    def renamed(key: str) -> str:
        if not shift or not key.startswith(TOP_BLOCKS):
            return key
        index, rest = key[len(TOP_BLOCKS):].split(".", 1)
        return f"{TOP_BLOCKS}{int(index) + shift}.{rest}"

    return {renamed(k): v for k, v in weights.items()}


def grow_trained_blocks(weights: dict[str, torch.Tensor], config: FeatureConfig, blocks: int) -> dict[str, torch.Tensor]:
    """The weights of a whisper-torch model (last layer) that trained `config.finetune_blocks` top
    blocks, as those of the same model training `blocks` (at least as many): its trained blocks stay
    on top and the blocks below (and the final norm, if it trained none) take the encoder's own weights,
    which is what they were when frozen, so the grown model computes the same features. This is what
    lets `asr average` mix runs from one start that trained different numbers of blocks."""
    if config.frontend != "whisper-torch" or config.encoder_layers != "last":
        raise ValueError(f"only whisper-torch models read at the last layer train encoder blocks, not "
                         f"{config.frontend!r} ({config.encoder_layers!r})")
    shift = blocks - config.finetune_blocks
    if shift < 0:
        raise ValueError(f"a model that trained {config.finetune_blocks} blocks cannot be read as one training {blocks}")
    folder = find_encoder(config.encoder)
    check_identity(folder, config.encoder_id)
    encoder = frozen_encoder(folder, torch.device("cpu"))
    if blocks > len(encoder.blocks):
        raise ValueError(f"features.finetune_blocks {blocks}: the encoder in {folder} has {len(encoder.blocks)} blocks")
    grown = renumber_top_blocks(weights, shift)
    first = len(encoder.blocks) - blocks
    for j in range(shift):
        grown.update({f"{TOP_BLOCKS}{j}.{name}": value.detach().clone()
                      for name, value in encoder.blocks[first + j].state_dict().items()})
    if not config.finetune_blocks:
        grown.update({f"frontend.top_norm.{name}": value.detach().clone()
                      for name, value in encoder.final_norm.state_dict().items()})
    return grown
