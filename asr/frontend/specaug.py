"""SpecAugment (Park et al., 2019): time warping, frequency and time masks on a batch of normalized
features, vectorized, each utterance with its own draws and within its own length.

Shapes: features (batch, frames, dims), lengths (batch,).
"""

from __future__ import annotations

import torch

from ..config import SpecAugmentConfig


def spec_augment(
    feats: torch.Tensor, lengths: torch.Tensor, config: SpecAugmentConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """SpecAugment time warping, frequency and time masking (Park et al., 2019) on a batch, vectorized.

    feats: (B, T, F) normalized features (masked cells are set to 0, the mean), lengths: (B,) frames.
    Each utterance gets its own warp and masks; time masks scale with its own length. Returns a new tensor.
    """
    batch, frames, dims = feats.shape
    device = feats.device
    rand = lambda *shape: torch.rand(*shape, generator=generator, device="cpu").to(device)  # noqa: E731
    if config.time_warp > 0:
        feats = time_warp(feats, lengths, config.time_warp, rand(batch), rand(batch))
    keep = torch.ones(batch, frames, dims, dtype=torch.bool, device=device)
    if config.freq_masks > 0 and config.freq_width > 0:
        width = (rand(batch, config.freq_masks) * (config.freq_width + 1)).floor()
        start = (rand(batch, config.freq_masks) * (dims - width)).floor()
        bins = torch.arange(dims, device=device).view(1, 1, dims)
        masked = (bins >= start.unsqueeze(-1)) & (bins < (start + width).unsqueeze(-1))  # (B, M, F)
        keep &= ~masked.any(dim=1).unsqueeze(1)
    if config.time_masks > 0 and config.time_width > 0:
        max_width = (lengths.to(device).float() * config.time_width).clamp(max=config.max_time_width).floor()
        width = (rand(batch, config.time_masks) * (max_width.unsqueeze(-1) + 1)).floor()
        start = (rand(batch, config.time_masks) * (lengths.to(device).float().unsqueeze(-1) - width).clamp_min(0)).floor()
        steps = torch.arange(frames, device=device).view(1, 1, frames)
        masked = (steps >= start.unsqueeze(-1)) & (steps < (start + width).unsqueeze(-1))  # (B, M, T)
        keep &= ~masked.any(dim=1).unsqueeze(-1)
    return feats * keep


def time_warp(
    feats: torch.Tensor, lengths: torch.Tensor, max_warp: int, centre_draw: torch.Tensor, shift_draw: torch.Tensor
) -> torch.Tensor:
    """SpecAugment time warping, each utterance within its own length, by one gather.

    feats: (B, T, F), lengths: (B,) frames, centre_draw and shift_draw: (B,) uniform in [0, 1).
    For an utterance of L frames the warp W is max_warp, reduced to (L - 3) // 2 for short ones
    (no warp below 5 frames); a centre c is drawn from [W + 1, L - 2 - W] and a shift w from [-W, W].
    Output frames [0, c + w] are frames [0, c] stretched by linear interpolation, and output frames
    [c + w, L - 1] are frames [c, L - 1]: the ends stay where they are, the utterance keeps its length,
    and frames past L are returned unchanged. Linear rather than bicubic (ESPnet) interpolation: it
    never overshoots, so a warped feature stays within the range of its neighbours.
    """
    batch, frames, _ = feats.shape
    device = feats.device
    length = lengths.to(device).long()
    warp = torch.clamp(torch.div(length - 3, 2, rounding_mode="floor"), min=0).clamp(max=max_warp)  # (B,)
    centre = warp + 1 + (centre_draw.to(device) * (length - 2 - 2 * warp).clamp_min(1)).floor().long()
    shift = (shift_draw.to(device) * (2 * warp + 1)).floor().long() - warp
    target = centre + shift  # where the centre frame lands, in [1, L - 2] whenever warp > 0
    step = torch.arange(frames, device=device).unsqueeze(0)  # (1, T)
    last = (length - 1).clamp_min(1).unsqueeze(1).float()
    c, t = centre.unsqueeze(1).float(), target.unsqueeze(1).float()
    left = step * (c / t.clamp_min(1))
    right = c + (step - t) * (last - c) / (last - t).clamp_min(1)
    source = torch.where(step < t, left, right)  # (B, T) fractional source frame of each output frame
    warped = (warp > 0).unsqueeze(1) & (step < length.unsqueeze(1))
    source = torch.where(warped, source, step.float())
    lower = source.floor().long().clamp(0, frames - 1)
    upper = torch.minimum(lower + 1, (length - 1).clamp_min(0).unsqueeze(1)).clamp(0, frames - 1)
    fraction = (source - lower).unsqueeze(-1).to(feats.dtype)
    gather = lambda index: feats.gather(1, index.unsqueeze(-1).expand_as(feats))  # noqa: E731
    interpolated = torch.lerp(gather(lower), gather(upper), fraction)
    return torch.where(warped.unsqueeze(-1), interpolated, feats)
