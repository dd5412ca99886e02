"""asr.config: YAML files, command-line overrides and type checking."""

from __future__ import annotations

from pathlib import Path

import pytest

from asr.config import Config, ConfigError, apply_overrides, config_from_dict, load_config

REPO_ROOT = Path(__file__).resolve().parent.parent


def write_yaml(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


EXAMPLE = """\
features:
  sample_rate: 8000
  n_mels: 40
model:
  subsampling: stack
  subsampling_factor: 3
  rnn_type: gru
  bidirectional: false
specaug:
  time_width: 0.1
train:
  epochs: 5
  lr: 3.0e-3
  preload_audio: false
  device: cpu
decode:
  batch_seconds: 60.0
"""


def test_defaults_without_file():
    config = load_config(None)
    assert config == Config()
    assert config.train.epochs == 20
    assert config.model.bidirectional is True
    assert config.features.sample_rate == 16000


def test_load_yaml_file(tmp_path):
    config = load_config(write_yaml(tmp_path, EXAMPLE))
    assert config.features.sample_rate == 8000
    assert config.features.n_mels == 40
    assert config.features.n_fft == 400  # untouched options keep their defaults
    assert config.model.subsampling == "stack"
    assert config.model.subsampling_factor == 3
    assert config.model.rnn_type == "gru"
    assert config.model.bidirectional is False
    assert config.specaug.time_width == 0.1
    assert config.train.epochs == 5
    assert config.train.lr == pytest.approx(3e-3)
    assert config.train.preload_audio is False
    assert config.train.device == "cpu"
    assert config.decode.batch_seconds == 60.0


def test_overrides_apply_after_the_file(tmp_path):
    path = write_yaml(tmp_path, EXAMPLE)
    config = load_config(
        path,
        [
            "train.epochs=7",
            "train.lr=0.01",
            "model.bidirectional=true",
            "model.rnn_type=lstm",
            "train.device=cuda:1",
            "decode.decoder=a=b",  # only the first '=' separates key and value
        ],
    )
    assert config.train.epochs == 7
    assert config.train.lr == 0.01
    assert config.model.bidirectional is True
    assert config.model.rnn_type == "lstm"
    assert config.train.device == "cuda:1"
    assert config.decode.decoder == "a=b"
    assert config.features.sample_rate == 8000  # from the file


def test_later_override_wins():
    config = load_config(None, ["train.epochs=3", "train.epochs=4"])
    assert config.train.epochs == 4


def test_empty_yaml_file_gives_defaults(tmp_path):
    assert load_config(write_yaml(tmp_path, "")) == Config()
    assert load_config(write_yaml(tmp_path, "# only a comment\n", "c.yaml")) == Config()
    assert load_config(write_yaml(tmp_path, "train: {}\n", "d.yaml")) == Config()


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_to_dict_round_trip():
    config = load_config(None, ["train.epochs=3", "model.rnn_type=gru", "specaug.time_width=0.2"])
    data = config.to_dict()
    assert data["train"]["epochs"] == 3
    assert config_from_dict(data) == config


# --------------------------------------------------------------------------- unknown names


def test_unknown_section_in_file(tmp_path):
    path = write_yaml(tmp_path, "trainer:\n  epochs: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "trainer" in str(info.value)
    assert str(path) in str(info.value)


def test_unknown_key_in_file(tmp_path):
    path = write_yaml(tmp_path, "train:\n  epochs: 3\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "train.learning_rate" in str(info.value)
    assert str(path) in str(info.value)


def test_section_must_be_a_mapping(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(write_yaml(tmp_path, "train: 5\n"))
    assert "train" in str(info.value)


@pytest.mark.parametrize(
    "override, named",
    [
        ("trainer.epochs=3", "trainer"),
        ("train.epoch=3", "train.epoch"),
        ("model.layers=2", "model.layers"),
    ],
)
def test_unknown_names_in_overrides(override, named):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert named in str(info.value)


@pytest.mark.parametrize("override", ["epochs=3", "train.epochs", "train.epochs:3", ""])
def test_malformed_overrides(override):
    with pytest.raises(ConfigError):
        load_config(None, [override])


# --------------------------------------------------------------------------- types


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.epochs=ten", "train.epochs"),
        ("train.epochs=2.5", "train.epochs"),
        ("train.epochs=true", "train.epochs"),
        ("train.lr=fast", "train.lr"),
        ("train.lr=true", "train.lr"),
        ("train.lr=[0.1]", "train.lr"),
        ("model.subsampling=3", "model.subsampling"),
        ("model.hidden_size=1.0", "model.hidden_size"),
        ("features.n_mels=null", "features.n_mels"),
        ("train.device=false", "train.device"),
    ],
)
def test_wrong_types_in_overrides(override, key):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert key in str(info.value)


@pytest.mark.parametrize(
    "text, key",
    [
        ("train:\n  epochs: ten\n", "train.epochs"),
        ("train:\n  epochs: 2.5\n", "train.epochs"),
        ("train:\n  lr: fast\n", "train.lr"),
        ("model:\n  rnn_type: 3\n", "model.rnn_type"),
        ("model:\n  bidirectional: 1\n", "model.bidirectional"),
        ("specaug:\n  freq_masks: [1, 2]\n", "specaug.freq_masks"),
    ],
)
def test_wrong_types_in_file(tmp_path, text, key):
    path = write_yaml(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert key in str(info.value)
    assert str(path) in str(info.value)


def test_int_accepted_for_float_options(tmp_path):
    config = load_config(write_yaml(tmp_path, "train:\n  lr: 1\n  max_minutes: 30\n"), ["specaug.time_width=0"])
    assert config.train.lr == 1.0 and isinstance(config.train.lr, float)
    assert config.train.max_minutes == 30.0 and isinstance(config.train.max_minutes, float)
    assert config.specaug.time_width == 0.0 and isinstance(config.specaug.time_width, float)


def test_exponent_without_dot_is_a_float(tmp_path):
    # YAML 1.1 (PyYAML) reads "1e-3" as a string; the loader must still take it as a float.
    config = load_config(write_yaml(tmp_path, "train:\n  lr: 1e-3\n"), ["train.final_lr_ratio=5e-2"])
    assert config.train.lr == pytest.approx(1e-3) and isinstance(config.train.lr, float)
    assert config.train.final_lr_ratio == pytest.approx(0.05)


@pytest.mark.parametrize("value, expected", [("true", True), ("false", False), ("True", True), ("FALSE", False)])
def test_bool_options_accept_true_false(value, expected):
    config = load_config(None, [f"train.preload_audio={value}", f"model.bidirectional={value}"])
    assert config.train.preload_audio is expected
    assert config.model.bidirectional is expected


@pytest.mark.parametrize("value", ["1", "0", "'true'", '"false"', "2", "null", "1.0", "maybe"])
def test_bool_options_reject_other_values(value):
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"train.preload_audio={value}"])
    message = str(info.value)
    assert "train.preload_audio" in message
    assert "true or false" in message


def test_apply_overrides_in_place():
    config = Config()
    apply_overrides(config, ["train.seed=9"])
    assert config.train.seed == 9


# --------------------------------------------------------------------------- shipped configs


def _shipped_configs() -> list[Path]:
    return sorted((REPO_ROOT / "conf").glob("*.yaml"))


@pytest.mark.parametrize("path", _shipped_configs() or [None], ids=lambda p: p.name if p else "none")
def test_shipped_configs_load(path):
    if path is None:
        pytest.skip("no conf/*.yaml in this checkout")
    config = load_config(path)
    assert isinstance(config, Config)
    assert config.features.n_fft >= config.features.hop_length > 0


# --------------------------------------------------------------------------- list-valued options


def test_list_option_from_yaml_and_override(tmp_path):
    path = write_yaml(tmp_path, "train:\n  speed_perturb: [0.9, 1, 1.1]\n  noise_snr_db:\n    - 5\n    - 2.0e+1\n")
    config = load_config(path)
    assert config.train.speed_perturb == [0.9, 1.0, 1.1]
    assert all(isinstance(f, float) for f in config.train.speed_perturb + config.train.noise_snr_db)
    assert config.train.noise_snr_db == [5.0, 20.0]
    config = load_config(path, ["train.speed_perturb=[0.95,1.0,1.05]", "train.noise_snr_db=[1e1, 30]"])
    assert config.train.speed_perturb == [0.95, 1.0, 1.05]
    assert config.train.noise_snr_db == [10.0, 30.0]
    assert load_config(path, ["train.speed_perturb=[]"]).train.speed_perturb == []


def test_list_defaults_are_not_shared():
    a, b = Config(), Config()
    a.train.noise_snr_db.append(99.0)
    assert b.train.noise_snr_db == [10.0, 30.0] and Config().train.speed_perturb == []


@pytest.mark.parametrize(
    "override, named",
    [
        ("train.speed_perturb=0.9", "train.speed_perturb"),  # a scalar, not a list
        ("train.speed_perturb=0.9,1.1", "train.speed_perturb"),  # YAML reads this as a string
        ("train.speed_perturb=null", "train.speed_perturb"),
        ("train.speed_perturb=[0.9,fast]", "train.speed_perturb[1]"),
        ("train.speed_perturb=[true]", "train.speed_perturb[0]"),
        ("train.noise_snr_db=[10,[20]]", "train.noise_snr_db[1]"),
        ("train.noise_snr_db={a: 1}", "train.noise_snr_db"),
    ],
)
def test_wrong_list_values(override, named):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert named in message and override in message
    assert "float" in message


def test_list_options_round_trip_and_old_checkpoint_configs_load():
    config = load_config(None, ["train.speed_perturb=[0.9,1.0,1.1]", "train.noise_prob=0.3"])
    data = config.to_dict()
    assert data["train"]["speed_perturb"] == [0.9, 1.0, 1.1]
    assert config_from_dict(data) == config
    # A checkpoint written before these options existed lacks the keys: the defaults fill in.
    for key in ("speed_perturb", "noise_prob", "noise_snr_db", "noise_manifest"):
        del data["train"][key]
    del data["specaug"]["time_warp"]
    old = config_from_dict(data, "checkpoint config")
    assert old.specaug.time_warp == 0
    assert old.train.speed_perturb == [] and old.train.noise_snr_db == [10.0, 30.0] and old.train.noise_prob == 0.0
    assert old.train.epochs == config.train.epochs
