#!/usr/bin/env bash
# Free Spoken Digit Dataset: download -> prepare (official split: take 0-4 is test) -> train -> decode -> score.
#   recipes/fsdd/run.sh --corpus-dir ../shared/data/fsdd
# Trains in a few minutes on a CPU.
set -euo pipefail

stage=0
stop_stage=100
corpus_dir=""                 # local copy (the folder holding recordings/); skips the download
download_dir=downloads
work_dir=""                   # where data/ and exp/ go (default: this recipe's folder)
config=""                     # default: conf/fsdd.yaml
exp_name=fsdd
train_args=""
decode_args=""
recipe_options="stage stop_stage corpus_dir download_dir work_dir config exp_name train_args decode_args"
. "$(dirname "$0")/../parse_options.sh"

[ -n "$corpus_dir" ] && corpus_dir=$(realpath "$corpus_dir")
[ -n "$config" ] && config=$(realpath "$config")
recipe_dir=$(realpath "$(dirname "$0")")
config=${config:-$(realpath "$recipe_dir/../../conf/fsdd.yaml")}
mkdir -p "${work_dir:=$recipe_dir}" && cd "$work_dir"
exp=exp/$exp_name
log() { echo "$(date +%H:%M:%S) [stage $1] ${*:2}"; }

if [ -z "$corpus_dir" ]; then
  # Stage 0; later stages need the path too, and a second download call fetches nothing.
  [ $stage -le 0 ] && log 0 "download FSDD into $download_dir"
  corpus_dir=$(asr download fsdd --dest "$download_dir")
fi

if [ $stage -le 1 ] && [ $stop_stage -ge 1 ]; then
  for split in train test; do
    log 1 "prepare $split -> data/$split.jsonl"
    asr prepare fsdd --corpus-dir "$corpus_dir" --split $split --out data/$split.jsonl
  done
fi

train_set=train dev_set=test test_set=test
. "$recipe_dir/../stages.sh"
