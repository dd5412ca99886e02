"""asr.frontend.whisper_finetune: the whisper-torch frontend (Whisper's encoder in PyTorch, read at
its last layer, a weighted sum of all or the last two, or with its top blocks trained), its config
checks, cache, checkpoints, and train.init_from from a whisper-frontend head. Most tests run on a
tiny random encoder written as a CTranslate2 model.bin; those marked needs_encoder on the installed one."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from asr.checkpoint import average_checkpoints, load_model, read_checkpoint, save_checkpoint
from asr.config import ConfigError, load_config
from asr.data import read_manifest
from asr.frontend import FeatureConfig, make_frontend
from asr.frontend.whisper_finetune import WhisperTorchFrontend, frozen_encoder, grow_trained_blocks
from asr.frontend.whisper_numpy import whisper_log_mel
from asr.model import CTCModel
from asr.training import train
from encoder_support import needs_encoder
from synth import write_synth_corpus
from test_whisper_torch import tiny_encoder_variables, write_model_bin

torch.set_num_threads(1)

BLOCKS, DIM = 2, 12


@pytest.fixture(scope="module")
def encoder_folder(tmp_path_factory):
    """A tiny Whisper encoder (8 mels, 12-d, 3 heads, 2 blocks, 30 s of positions) as a model.bin."""
    folder = tmp_path_factory.mktemp("tiny-whisper")
    write_model_bin(folder / "model.bin", tiny_encoder_variables(layers=BLOCKS, positions=1500))
    return folder


def features(folder, **options) -> FeatureConfig:
    return FeatureConfig(frontend="whisper-torch", encoder=str(folder), **options)


def waves(*seconds: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, S) random audio padded with zeros, (B,) lengths."""
    generator = torch.Generator().manual_seed(seed)
    parts = [0.1 * torch.randn(int(16000 * s), generator=generator) for s in seconds]
    return torch.nn.utils.rnn.pad_sequence(parts, batch_first=True), torch.tensor([p.shape[0] for p in parts])


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize("options, message", [
    ({"encoder_layers": "first"}, "features.encoder_layers must be one of last, weighted, last2, not 'first'"),
    ({"finetune_blocks": -1}, "features.finetune_blocks must be 0"),
    ({"finetune_blocks": 1, "encoder_layers": "weighted"}, "features.finetune_blocks 1 needs features.encoder_layers 'last'"),
    ({"finetune_blocks": 3}, r"features.finetune_blocks 3: the encoder in .* has 2 blocks"),
    ({"sample_rate": 8000}, "the whisper-torch frontend takes 16000 Hz audio"),
])
def test_nonsense_settings_are_refused_naming_the_option(encoder_folder, options, message):
    with pytest.raises(ValueError, match=message):
        make_frontend(features(encoder_folder, **options))


@pytest.mark.parametrize("frontend", ["logmel", "whisper"])
def test_the_whisper_torch_options_are_refused_on_other_frontends(frontend):
    for options in ({"finetune_blocks": 1}, {"encoder_layers": "last2"}):
        with pytest.raises(ValueError, match=f"apply to features.frontend whisper-torch only, not '{frontend}'"):
            make_frontend(FeatureConfig(frontend=frontend, **options))


def test_a_config_with_such_settings_is_refused_when_read(tmp_path):
    """Before any data is read: the error names the file (and the overrides)."""
    path = tmp_path / "bad.yaml"
    path.write_text("features:\n  frontend: whisper\n  finetune_blocks: 2\n")
    with pytest.raises(ConfigError, match=rf"{path}: features.encoder_layers and features.finetune_blocks apply to"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"defaults with overrides features.encoder_layers=all: "
                                          r"features.encoder_layers must be one of"):
        load_config(None, ["features.encoder_layers=all"])


# --------------------------------------------------------------------------- features


def test_last_layer_without_fine_tuning_is_the_encoders_last_layer(encoder_folder):
    frontend = make_frontend(features(encoder_folder))
    assert isinstance(frontend, WhisperTorchFrontend) and frontend.dim == DIM
    assert list(frontend.parameters()) == []
    batch, lengths = waves(1.3)
    feats, frames = frontend(batch, lengths)
    mel = torch.from_numpy(whisper_log_mel(batch[0].numpy(), 8))[None]
    expected = frozen_encoder(encoder_folder, torch.device("cpu")).hidden_states(mel)[-1]
    assert feats.shape == (1, 65, DIM) and frames.tolist() == [65] == frontend.num_frames(lengths).tolist()
    torch.testing.assert_close(feats, expected)


def test_the_layer_choices_combine_the_encoders_layer_outputs(encoder_folder):
    batch, lengths = waves(0.7)
    mel = torch.from_numpy(whisper_log_mel(batch[0].numpy(), 8))[None]
    states = frozen_encoder(encoder_folder, torch.device("cpu")).hidden_states(mel)
    weighted = make_frontend(features(encoder_folder, encoder_layers="weighted"))
    assert [name for name, _ in weighted.named_parameters()] == ["layer_weights"]
    torch.testing.assert_close(weighted(batch, lengths)[0][0], torch.stack(states).mean(0)[0])  # equal weights at first
    last2 = make_frontend(features(encoder_folder, encoder_layers="last2"))
    assert last2.dim == 2 * DIM
    torch.testing.assert_close(last2(batch, lengths)[0][0], torch.cat(states[-2:], dim=-1)[0])


@pytest.mark.parametrize("options", [{"finetune_blocks": 1}, {"finetune_blocks": 2}, {}])
def test_features_do_not_depend_on_the_batch(encoder_folder, options):
    """Over 30 s the encoder runs in windows; the trained blocks see them padded together with
    other utterances' windows, and the padding mask keeps each to itself."""
    frontend = make_frontend(features(encoder_folder, **options))
    batch, lengths = waves(31.0, 0.5, 3.0, seed=1)
    together, frames = frontend(batch, lengths)
    assert frames.tolist() == frontend.num_frames(lengths).tolist() == [1550, 25, 150]
    for i in range(3):
        alone, _ = frontend(batch[i : i + 1, : lengths[i]], lengths[i : i + 1])
        torch.testing.assert_close(together[i, : frames[i]], alone[0], rtol=1e-5, atol=1e-5)


def test_fine_tuning_all_blocks_of_a_window_equals_the_encoder(encoder_folder):
    """The trained copies start as the encoder's blocks: before training the features are the last layer."""
    tuned, frozen = (make_frontend(features(encoder_folder, finetune_blocks=k)) for k in (BLOCKS, 0))
    batch, lengths = waves(2.0, 1.1)
    torch.testing.assert_close(tuned(batch, lengths)[0], frozen(batch, lengths)[0], rtol=1e-5, atol=1e-5)


def test_gradients_reach_the_top_block_only(encoder_folder):
    frontend = make_frontend(features(encoder_folder, finetune_blocks=1))
    names = [name for name, _ in frontend.named_parameters()]
    assert names and all(n.startswith(("top_blocks.0.", "top_norm.")) for n in names)
    frontend(*waves(1.0))[0].square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in frontend.parameters())
    encoder = frozen_encoder(encoder_folder, torch.device("cpu"))
    assert all(p.grad is None and not p.requires_grad for p in encoder.parameters())


def test_a_copy_shares_the_frozen_encoder_and_the_cache(encoder_folder, tmp_path):
    frontend = make_frontend(features(encoder_folder, finetune_blocks=1))
    frontend.use_cache(tmp_path)
    twin = copy.deepcopy(frontend)  # as for EMA weights
    assert twin.cache is frontend.cache and twin.top_blocks[0].qkv.weight is not frontend.top_blocks[0].qkv.weight


def test_the_cache_keeps_the_frozen_part_per_variant(encoder_folder, tmp_path, monkeypatch):
    batch, lengths = waves(1.0)
    folders = {}
    for options in ({}, {"finetune_blocks": 1}, {"encoder_layers": "weighted"}, {"encoder_layers": "last2"}):
        frontend = make_frontend(features(encoder_folder, **options))
        frontend.use_cache(tmp_path)
        first = frontend(batch, lengths)[0]
        files = {p for p in tmp_path.rglob("*.npy")} - {p for f in folders.values() for p in f}
        assert len(files) == 1, options  # its own file, not another variant's
        folders[frontend.variant] = files
        stored = np.load(next(iter(files)))
        assert stored.dtype == np.float16
        assert stored.shape == {"torch-last": (50, DIM), "torch-last-top1": (50, DIM),
                                "torch-weighted": (BLOCKS + 1, 50, DIM), "torch-last2": (2, 50, DIM)}[frontend.variant]
        monkeypatch.setattr(frontend, "frozen_states", lambda wave: pytest.fail("computed again"))
        torch.testing.assert_close(frontend(batch, lengths)[0], first)
        monkeypatch.undo()
    assert len({next(iter(f)).parent.parent.name for f in folders.values()}) == 4


# --------------------------------------------------------------------------- training and checkpoints

OVERRIDES = [
    "features.frontend=whisper-torch", "model.subsampling=stack", "model.subsampling_factor=2",
    "model.hidden_size=16", "model.num_layers=1", "specaug.freq_masks=1", "specaug.freq_width=2",
    "specaug.time_masks=0", "train.epochs=1", "train.max_steps=2", "train.max_batch_seconds=6",
    "train.warmup_steps=1", "train.num_workers=0", "train.device=cpu", "train.feature_cache=''",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return read_manifest(write_synth_corpus(tmp_path_factory.mktemp("synth")))


def test_a_fine_tuned_checkpoint_holds_the_top_block_and_loads(encoder_folder, corpus, tmp_path):
    config = load_config(None, OVERRIDES + [f"features.encoder={encoder_folder}", "features.finetune_blocks=1",
                                            "train.frontend_lr_scale=0.1"])
    train(config, corpus, corpus[:2], tmp_path)
    payload = read_checkpoint(tmp_path / "last.pt")
    frontend_keys = sorted(k for k in payload["model"] if k.startswith("frontend."))
    assert frontend_keys and all(k.startswith(("frontend.top_blocks.0.", "frontend.top_norm.")) for k in frontend_keys)
    assert not any("conv1" in k or "positions" in k for k in payload["model"])  # the frozen part stays out
    assert payload["config"]["features"]["encoder_id"].startswith(f"{encoder_folder.name}:")
    head, frontend = payload["optimizer"]["param_groups"]
    assert head["lr_scale"] == 1.0 and frontend["lr_scale"] == 0.1 and frontend["lr"] == pytest.approx(0.1 * head["lr"])
    model, _, _ = load_model(tmp_path / "last.pt")
    torch.testing.assert_close(model.frontend.top_blocks[0].qkv.weight, payload["model"]["frontend.top_blocks.0.qkv.weight"])


def test_a_fine_tuning_run_resumes_exactly(encoder_folder, corpus, tmp_path):
    """The block's parameter group and learning rate, and the EMA copy of the block, come back from
    last.pt; and the first run of the process (which loads the encoder) starts from the same weights."""
    overrides = OVERRIDES + [f"features.encoder={encoder_folder}", "features.finetune_blocks=1",
                             "train.frontend_lr_scale=0.5", "train.ema_decay=0.9", "train.max_steps=3"]
    train(load_config(None, overrides), corpus, corpus[:2], tmp_path / "full")
    train(load_config(None, overrides + ["train.max_steps=2"]), corpus, corpus[:2], tmp_path / "cut")
    train(load_config(None, overrides), corpus, corpus[:2], tmp_path / "cut", resume=True)
    a, b = read_checkpoint(tmp_path / "full" / "last.pt"), read_checkpoint(tmp_path / "cut" / "last.pt")
    assert "frontend.top_blocks.0.qkv.weight" in a["ema"]
    for entry in ("model", "ema"):
        for key in a[entry]:
            assert torch.equal(a[entry][key], b[entry][key]), (entry, key)
    assert [g["lr"] for g in a["optimizer"]["param_groups"]] == [g["lr"] for g in b["optimizer"]["param_groups"]]


def test_a_negative_frontend_learning_rate_scale_is_refused(encoder_folder, corpus, tmp_path):
    with pytest.raises(ValueError, match="train.frontend_lr_scale must be 0 .* or more, got -1.0"):
        train(load_config(None, OVERRIDES + [f"features.encoder={encoder_folder}", "train.frontend_lr_scale=-1"]),
              corpus, corpus[:2], tmp_path)


def _whisper_checkpoint(encoder_folder, corpus, folder):
    """A checkpoint as the whisper frontend writes one: trained here on the float last layer
    (whisper-torch without fine-tuning has no frontend weights either), recorded as frontend whisper."""
    train(load_config(None, OVERRIDES + [f"features.encoder={encoder_folder}"]), corpus, corpus[:2], folder)
    payload = read_checkpoint(folder / "last.pt")
    payload["config"]["features"]["frontend"] = "whisper"
    save_checkpoint(folder / "whisper.pt", payload)
    return folder / "whisper.pt", payload


def test_init_from_a_whisper_head_fine_tunes_it_under_the_encoders_top_block(encoder_folder, corpus, tmp_path):
    source, payload = _whisper_checkpoint(encoder_folder, corpus, tmp_path / "whisper")
    # lr 0: the head stays what it was trained to, the block what the encoder holds.
    config = load_config(None, OVERRIDES + [f"features.encoder={encoder_folder}", "features.finetune_blocks=1",
                                            f"train.init_from={source}", "train.lr=0"])
    train(config, corpus, corpus[:2], tmp_path / "tuned")
    tuned = read_checkpoint(tmp_path / "tuned" / "last.pt")["model"]
    for key, value in payload["model"].items():
        torch.testing.assert_close(tuned[key], value, msg=key)
    encoder = frozen_encoder(encoder_folder, torch.device("cpu"))
    torch.testing.assert_close(tuned["frontend.top_blocks.0.qkv.weight"], encoder.blocks[1].qkv.weight)


def test_init_from_a_whisper_head_into_other_widths_or_encoders_is_refused(encoder_folder, corpus, tmp_path):
    source, _ = _whisper_checkpoint(encoder_folder, corpus, tmp_path / "whisper")
    refusal = (rf"{source}: cannot fine-tune from it \(train.init_from\): this run's features.frontend 'whisper' -> "
               r"'whisper-torch'; features.encoder_layers 'last' -> 'last2'")
    with pytest.raises(ValueError, match=refusal):
        train(load_config(None, OVERRIDES + [f"features.encoder={encoder_folder}", "features.encoder_layers=last2",
                                             f"train.init_from={source}"]), corpus, corpus[:2], tmp_path / "wide")
    with pytest.raises(ValueError, match=r"features.encoder_id '.*' -> 'other:0123'"):
        train(load_config(None, OVERRIDES + [f"features.encoder={encoder_folder}", "features.encoder_id=other:0123",
                                             f"train.init_from={source}"]), corpus, corpus[:2], tmp_path / "other")


def test_init_from_fewer_trained_blocks_keeps_them_on_top_and_starts_the_new_ones_from_the_encoder(
        encoder_folder, corpus, tmp_path):
    """A run that trained the top block continues with both blocks trained (issue 23: growing the trained
    part of the encoder): its block stays the top one, the block below starts as the encoder holds it."""
    top1 = OVERRIDES + [f"features.encoder={encoder_folder}", "features.finetune_blocks=1", "train.lr=0.01",
                        "train.frontend_lr_scale=1"]
    train(load_config(None, top1), corpus, corpus[:2], tmp_path / "top1")
    source = read_checkpoint(tmp_path / "top1" / "last.pt")["model"]
    encoder = frozen_encoder(encoder_folder, torch.device("cpu"))
    assert not torch.equal(source["frontend.top_blocks.0.qkv.weight"], encoder.blocks[1].qkv.weight)  # it trained
    config = load_config(None, OVERRIDES + [f"features.encoder={encoder_folder}", f"features.finetune_blocks={BLOCKS}",
                                            f"train.init_from={tmp_path / 'top1' / 'last.pt'}", "train.lr=0"])
    train(config, corpus, corpus[:2], tmp_path / "top2")
    grown = read_checkpoint(tmp_path / "top2" / "last.pt")["model"]
    for key, value in source.items():
        moved = key.replace("frontend.top_blocks.0.", f"frontend.top_blocks.{BLOCKS - 1}.")
        torch.testing.assert_close(grown[moved], value, msg=key)
    for name, value in encoder.blocks[0].state_dict().items():
        torch.testing.assert_close(grown[f"frontend.top_blocks.0.{name}"], value, msg=name)
    # Fewer trained blocks than the checkpoint holds would drop trained weights: refused.
    with pytest.raises(ValueError, match=r"cannot fine-tune from it \(train.init_from\): this run's "
                                         rf"features.finetune_blocks {BLOCKS} -> 1 differs"):
        train(load_config(None, top1 + [f"train.init_from={tmp_path / 'top2' / 'last.pt'}"]), corpus, corpus[:2],
              tmp_path / "fewer")


@pytest.mark.parametrize("trained", [0, 1])
def test_a_model_grown_to_more_trained_blocks_computes_the_same_features(encoder_folder, trained):
    """grow_trained_blocks: the blocks a model left frozen take the encoder's own weights, so the grown
    model (as `asr average` reads it) gives the features the model gave."""
    small = make_frontend(features(encoder_folder, finetune_blocks=trained))
    for parameter in small.parameters():  # as if trained: not the encoder's values any more
        parameter.data.add_(0.05 * torch.randn_like(parameter))
    weights = {f"frontend.{k}": v for k, v in small.state_dict().items()}
    grown = grow_trained_blocks(weights, small.config, BLOCKS)
    assert sorted(grown) == sorted(f"frontend.{k}" for k in make_frontend(
        features(encoder_folder, finetune_blocks=BLOCKS)).state_dict())
    big = make_frontend(features(encoder_folder, finetune_blocks=BLOCKS))
    big.load_state_dict({k.removeprefix("frontend."): v for k, v in grown.items()})
    batch, lengths = waves(2.0, 1.1)
    torch.testing.assert_close(big(batch, lengths)[0], small(batch, lengths)[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=f"features.finetune_blocks {BLOCKS + 1}: the encoder in .* has {BLOCKS} blocks"):
        grow_trained_blocks(weights, small.config, BLOCKS + 1)


def test_average_of_runs_that_trained_different_blocks(encoder_folder, corpus, tmp_path):
    """asr average over whisper-torch runs that trained one and two blocks (a soup of runs from one
    start, issue 23): the one-block run counts with the encoder's own lower block; weights apply."""
    base = OVERRIDES + [f"features.encoder={encoder_folder}", "train.lr=0.01", "train.frontend_lr_scale=1"]
    for k in (1, BLOCKS):
        train(load_config(None, base + [f"features.finetune_blocks={k}"]), corpus, corpus[:2], tmp_path / f"top{k}")
    paths = [tmp_path / "top1" / "last.pt", tmp_path / f"top{BLOCKS}" / "last.pt"]
    one, two = (read_checkpoint(p)["model"] for p in paths)
    payload = average_checkpoints(paths, weights=[3, 1])
    assert payload["config"]["features"]["finetune_blocks"] == BLOCKS
    assert payload["metadata"]["weights"] == [0.75, 0.25]
    encoder = frozen_encoder(encoder_folder, torch.device("cpu"))
    own = {f"frontend.top_blocks.0.{k}": v for k, v in encoder.blocks[0].state_dict().items()}
    for key, value in payload["model"].items():
        if key in own:  # frozen in the one-block run
            expected = 0.75 * own[key] + 0.25 * two[key]
        else:
            moved = key.replace(f"frontend.top_blocks.{BLOCKS - 1}.", "frontend.top_blocks.0.")
            expected = 0.75 * one[moved] + 0.25 * two[key] if value.is_floating_point() else two[key]
        torch.testing.assert_close(value, expected, rtol=0, atol=1e-6, msg=key)
    # Either order: the result trains the most blocks.
    assert average_checkpoints(paths[::-1])["config"]["features"]["finetune_blocks"] == BLOCKS


# --------------------------------------------------------------------------- the installed encoder


@needs_encoder
def test_the_shipped_head_fits_whisper_torch_with_a_fine_tuned_block():
    """train.init_from models/en-whisper-tiny-bilstm-ctc.pt into conf/whisper_torch_ft1_cpu.yaml: the
    guard lets it through and every weight of the head fits (384-d features, like CTranslate2's)."""
    from pathlib import Path

    from asr.text import tokenizer_from_dict
    from asr.training.resume import load_init_weights, read_init_checkpoint

    shipped = Path(__file__).resolve().parent.parent / "models" / "en-whisper-tiny-bilstm-ctc.pt"
    config = load_config(Path(__file__).resolve().parent.parent / "conf" / "whisper_torch_ft1_cpu.yaml",
                         [f"train.init_from={shipped}"])
    payload = read_init_checkpoint(str(shipped), config)
    tokenizer = tokenizer_from_dict(payload["tokenizer"])
    model = CTCModel(config.features, config.model, len(tokenizer))
    assert model.frontend.dim == 384 and len(model.frontend.top_blocks) == 1
    load_init_weights(model, tokenizer, payload, str(shipped))
    torch.testing.assert_close(model.output.weight, payload["model"]["output.weight"].float())
