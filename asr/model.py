"""The acoustic model: log-mel frontend -> time subsampling -> bidirectional LSTM -> linear -> CTC log-probs.

Shapes: waveforms (B, S); features (B, T, n_mels); encoder output (B, T', 2*hidden) with
T' ~= T / subsampling_factor; log-probs (B, T', vocab).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .config import ModelConfig
from .frontend import FeatureConfig, make_frontend
from .frontend.logmel import GlobalNormalizer, frame_mask


class ConvSubsampler(nn.Module):
    """Strided 3x3 convolutions over (time, frequency), each halving both; then a projection.
    Kernel 3, stride 2, padding 1: each layer gives T' = ceil(T / 2)."""

    def __init__(self, n_mels: int, channels: int, factor: int, out_dim: int):
        super().__init__()
        if factor not in (2, 4):
            raise ValueError(f"conv subsampling supports factors 2 and 4, not {factor}")
        layers, freq = [], n_mels
        for i in range(factor // 2):
            layers += [nn.Conv2d(1 if i == 0 else channels, channels, 3, stride=2, padding=1), nn.GELU()]
            freq = (freq + 1) // 2
        self.conv = nn.Sequential(*layers)
        self.num_layers = factor // 2
        self.proj = nn.Linear(channels * freq, out_dim)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Frames past each utterance's end are zeroed before every convolution, so the kernel that
        # straddles the end sees the same zeros as an unpadded utterance would.
        x = feats.unsqueeze(1)  # (B, 1, T, F)
        for layer in range(self.num_layers):
            x = x * frame_mask(lengths, x.shape[2]).view(x.shape[0], 1, -1, 1)
            x = self.conv[2 * layer + 1](self.conv[2 * layer](x))
            lengths = torch.div(lengths + 1, 2, rounding_mode="floor")
        b, c, t, f = x.shape
        x = self.proj(x.permute(0, 2, 1, 3).reshape(b, t, c * f))
        return x, lengths


class StackSubsampler(nn.Module):
    """Concatenate `factor` consecutive frames (the tail that does not fill a group is dropped)."""

    def __init__(self, n_mels: int, factor: int, out_dim: int):
        super().__init__()
        self.factor = factor
        self.proj = nn.Linear(n_mels * factor, out_dim)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, f = feats.shape
        # Zero the frames past each utterance's end, as an unbatched utterance would be padded.
        feats = feats * frame_mask(lengths, t).unsqueeze(-1)
        t_out = max(t // self.factor, 1)
        if t < self.factor:
            feats = nn.functional.pad(feats, (0, 0, 0, self.factor - t))
        x = feats[:, : t_out * self.factor].reshape(b, t_out, f * self.factor)
        lengths = torch.div(lengths, self.factor, rounding_mode="floor").clamp(min=1, max=t_out)
        return self.proj(x), lengths


class CTCModel(nn.Module):
    def __init__(self, features: FeatureConfig, config: ModelConfig, vocab_size: int):
        super().__init__()
        self.feature_config = features
        self.config = config
        self.frontend = make_frontend(features)
        feature_dim = self.frontend.dim
        self.normalizer = GlobalNormalizer(feature_dim)
        rnn_input = config.hidden_size
        if config.subsampling == "conv":
            self.subsampler = ConvSubsampler(feature_dim, config.conv_channels, config.subsampling_factor, rnn_input)
        elif config.subsampling == "stack":
            self.subsampler = StackSubsampler(feature_dim, config.subsampling_factor, rnn_input)
        else:
            raise ValueError(f"model.subsampling must be 'conv' or 'stack', not {config.subsampling!r}")
        rnn_class = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}.get(config.rnn_type)
        if rnn_class is None:
            raise ValueError(f"model.rnn_type must be lstm, gru or rnn, not {config.rnn_type!r}")
        self.rnn = rnn_class(
            rnn_input,
            config.hidden_size,
            num_layers=config.num_layers,
            batch_first=True,
            bidirectional=config.bidirectional,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(config.dropout)
        self.output = nn.Linear(config.hidden_size * (2 if config.bidirectional else 1), vocab_size)

    def features(self, waves: torch.Tensor, wave_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S), (B,) -> normalized features (B, T, dim), (B,) frames: log-mel, or a pretrained encoder's."""
        feats, lengths = self.frontend(waves, wave_lengths)
        return self.normalizer(feats), lengths

    def encode(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, n_mels), (B,) -> CTC log-probs (B, T', vocab) in float32, (B,) output frames."""
        x, lengths = self.subsampler(feats, lengths)
        lengths = lengths.clamp(min=1, max=x.shape[1])
        out = self._rnn_packed(x, lengths) if x.is_cuda else self._rnn_padded(x, lengths)
        logits = self.output(self.dropout(out))
        return logits.float().log_softmax(dim=-1), lengths

    def _rnn_packed(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """cuDNN path: packing keeps the backward direction from reading padding."""
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        return pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]

    def _rnn_padded(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """CPU path, the same function as _rnn_packed with the same weights. On the CPU, backward
        through a packed sequence is 30-50x slower than through a padded tensor (torch 2.14, measured),
        so each direction of each layer runs on the padded batch; the reverse direction sees each
        utterance flipped within its own length, so padding only ever follows the valid frames."""
        rnn = self.rnn
        flip = _flip_index(lengths, x.shape[1]).unsqueeze(-1)  # (B, T, 1); its own inverse
        out = x
        for layer in range(rnn.num_layers):
            if layer > 0:
                out = nn.functional.dropout(out, rnn.dropout, self.training)
            forward = self._one_direction(out, layer, "")
            if not rnn.bidirectional:
                out = forward
                continue
            flipped = out.gather(1, flip.expand_as(out))
            backward = self._one_direction(flipped, layer, "_reverse")
            out = torch.cat([forward, backward.gather(1, flip.expand_as(backward))], dim=-1)
        return out

    def _one_direction(self, x: torch.Tensor, layer: int, suffix: str) -> torch.Tensor:
        """One layer, one direction of self.rnn as a unidirectional single-layer RNN on (B, T, D):
        the ATen op that nn.LSTM/GRU/RNN call, given this layer's and direction's weights. Calling
        it directly (not through a module) keeps it traceable, for the ONNX export."""
        rnn = self.rnn
        weights = [getattr(rnn, f"{name}_l{layer}{suffix}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        h0 = x.new_zeros(1, x.shape[0], rnn.hidden_size)
        # (input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first)
        if self.config.rnn_type == "lstm":
            return torch.lstm(x, (h0, h0), weights, True, 1, 0.0, False, False, True)[0]
        op = torch.gru if self.config.rnn_type == "gru" else torch.rnn_tanh
        return op(x, h0, weights, True, 1, 0.0, False, False, True)[0]

    def forward(self, waves: torch.Tensor, wave_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S), (B,) -> log-probs (B, T', vocab), (B,) output frames."""
        return self.encode(*self.features(waves, wave_lengths))

    def output_frames(self, num_samples: int) -> int:
        """Encoder frames for an input of `num_samples` samples (for CTC feasibility checks)."""
        lengths = self.frontend.num_frames(torch.tensor([num_samples]))
        if self.config.subsampling == "conv":
            for _ in range(self.config.subsampling_factor // 2):
                lengths = torch.div(lengths + 1, 2, rounding_mode="floor")
        else:
            lengths = torch.div(lengths, self.config.subsampling_factor, rounding_mode="floor").clamp(min=1)
        return int(lengths)

    def min_samples(self) -> int:
        """The shortest input (samples) that gives one encoder output frame computed from the audio
        alone: the analysis windows of all the feature frames it combines lie inside the signal, not
        in the reflect padding at its edges or the zeros after it. Shorter input still gives output
        frames, but built from padding, and the model emits letters from them."""
        hop, n_fft = self.feature_config.hop_length, self.feature_config.n_fft
        first = -(-(n_fft // 2) // hop)  # first feature frame whose window starts at sample >= 0
        if self.config.subsampling == "conv":
            # Each stride-2, kernel-3, padding-1 layer: output j reads inputs 2j-1 .. 2j+1.
            stride = 2 ** (self.config.subsampling_factor // 2)
            reach = stride - 1  # output j reads feature frames stride*j - reach .. stride*j + reach
            j = -(-(first + reach) // stride)
            last = stride * j + reach
        else:
            factor = self.config.subsampling_factor  # output j stacks feature frames factor*j .. factor*j + factor-1
            j = -(-first // factor)
            last = factor * j + factor - 1
        return last * hop + (n_fft - n_fft // 2)

    @property
    def samples_per_frame(self) -> int:
        """Input samples per output frame."""
        return self.frontend.hop_length * self.config.subsampling_factor

    @property
    def frame_shift(self) -> float:
        """Seconds between consecutive output frames."""
        return self.samples_per_frame / self.feature_config.sample_rate


def _flip_index(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B,) -> (B, T) gather index reversing positions [0, length) of each row, padding left in place."""
    steps = torch.arange(max_len, device=lengths.device).unsqueeze(0)
    last = (lengths.to(steps.device) - 1).unsqueeze(1)
    return torch.where(steps <= last, last - steps, steps)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
