#!/usr/bin/env python3
"""Fill the feature cache of a pretrained-encoder config for some manifests, before training.

Training fills the cache itself during its first epoch; running this first keeps that one-off
cost out of a run's wall-clock budget, so runs of an experiment series compare at equal budget.

    python scripts/cache_features.py conf/whisper_bilstm_cpu.yaml data/train.jsonl data/dev.jsonl
    python scripts/cache_features.py conf/whisper_bilstm_cpu.yaml data/train.jsonl --speed 0.9 1.1

With --speed, each utterance is cached as train.speed_perturb plays it at each factor: the waveform
is the training dataset's own 16-bit copy, resampled by the same function, so training finds every
perturbed copy in the cache.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from tqdm import tqdm

from asr.config import load_config
from asr.data import SpeechDataset, change_speed, read_manifest, total_hours
from asr.frontend import make_frontend
from asr.text import build_tokenizer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="a config with features.frontend: whisper or whisper-torch")
    parser.add_argument("manifests", nargs="+")
    parser.add_argument("--cache", default=None, help="cache folder (default: the config's train.feature_cache)")
    parser.add_argument("--speed", type=float, nargs="+", default=[1.0], metavar="FACTOR",
                        help="speed perturbation factors to cache (default: 1.0, the audio as it is)")
    parser.add_argument("overrides", nargs="*", default=[], metavar="section.key=value")
    args = parser.parse_args(argv)
    # argparse gives every positional after the config to `manifests` (nargs="+" is greedy), so the
    # section.key=value words among them are the overrides.
    args.overrides += [a for a in args.manifests if "=" in a]
    args.manifests = [a for a in args.manifests if "=" not in a]
    if not args.manifests:
        parser.error("no manifest given (only overrides)")
    config = load_config(args.config, args.overrides)
    frontend = make_frontend(config.features)
    if not hasattr(frontend, "use_cache"):
        parser.error(f"{args.config}: features.frontend is {config.features.frontend!r}; only a pretrained "
                     "encoder's features are cached")
    folder = args.cache if args.cache is not None else config.train.feature_cache
    frontend.use_cache(os.path.expanduser(folder) if folder else None)
    utts = [u for path in args.manifests for u in read_manifest(path)]
    tokenizer = build_tokenizer(config.tokenizer, [u.text for u in utts])
    start = time.perf_counter()
    # The dataset preloads the 16-bit copy training keeps (read once for all factors), and each copy
    # is resampled as train.speed_perturb resamples it, so the cache keys are the ones training looks up.
    rate = config.features.sample_rate
    dataset = SpeechDataset(utts, tokenizer, rate, preload=True)
    for factor in args.speed:
        for index in tqdm(range(len(dataset)), unit="utt", desc=f"speed {factor:g}", file=sys.stderr):
            frontend.encode_one(change_speed(dataset[index][0], factor, rate))
    seconds = time.perf_counter() - start
    hours = total_hours(utts) * len(args.speed)
    print(f"{len(utts)} utterances x {len(args.speed)} speed(s), {hours:.2f} h of audio: features of {config.features.encoder_id} "
          f"in {seconds:.0f} s ({hours * 3600 / seconds:.0f}x real time, "
          f"{torch.get_num_threads()} threads) -> {folder or 'memory only'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
