#!/usr/bin/env bash
# TED-LIUM release 3 (452 h of TED talks; utterances are STM segments of whole-talk SPHERE files):
# download -> prepare -> train -> decode -> score.
#   recipes/tedlium/run.sh                                        # downloads TEDLIUM_release-3.tgz (~51 GB)
#   recipes/tedlium/run.sh --corpus-dir /data/TEDLIUM_release-3   # a local copy
#   recipes/tedlium/run.sh --layout legacy                        # release 2's train set (legacy/train)
set -euo pipefail

stage=0
stop_stage=100
corpus_dir=""                 # local copy (TEDLIUM_release-3); skips the download
download_dir=downloads
work_dir=""                   # where data/ and exp/ go (default: this recipe's folder)
layout=default                # default (train: data/, dev/test: legacy/), legacy or speaker-adaptation
max_duration=30               # skip longer segments when preparing (s)
config=""                     # default: conf/tedlium.yaml
exp_name=tedlium
train_args=""
decode_args=""
recipe_options="stage stop_stage corpus_dir download_dir work_dir layout max_duration config exp_name train_args decode_args"
. "$(dirname "$0")/../parse_options.sh"

[ -n "$corpus_dir" ] && corpus_dir=$(realpath "$corpus_dir")
[ -n "$config" ] && config=$(realpath "$config")
recipe_dir=$(realpath "$(dirname "$0")")
config=${config:-$(realpath "$recipe_dir/../../conf/tedlium.yaml")}
mkdir -p "${work_dir:=$recipe_dir}" && cd "$work_dir"
exp=exp/$exp_name
log() { echo "$(date +%H:%M:%S) [stage $1] ${*:2}"; }

if [ -z "$corpus_dir" ]; then
  [ $stage -le 0 ] && log 0 "download TED-LIUM 3 into $download_dir"
  corpus_dir=$(asr download tedlium --dest "$download_dir")
fi

if [ $stage -le 1 ] && [ $stop_stage -ge 1 ]; then
  for split in train dev test; do
    log 1 "prepare $split -> data/$split.jsonl"
    asr prepare tedlium --corpus-dir "$corpus_dir" --split $split --layout "$layout" \
      --max-duration "$max_duration" --out data/$split.jsonl
  done
fi

train_set=train dev_set=dev test_set=test
. "$recipe_dir/../stages.sh"
