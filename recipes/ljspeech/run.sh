#!/usr/bin/env bash
# LJSpeech (one speaker, 13,100 clips, ~24 h): download -> prepare -> train -> decode -> score.
#   recipes/ljspeech/run.sh                                  # downloads LJSpeech-1.1.tar.bz2 (2.6 GB)
#   recipes/ljspeech/run.sh --corpus-dir /data/LJSpeech-1.1  # a local copy
# Split (LJSpeech has none): the last 500 ids are held out, 250 dev then 250 test (ESPnet's convention).
set -euo pipefail

stage=0
stop_stage=100
corpus_dir=""                 # local copy (the LJSpeech-1.1 folder); skips the download
download_dir=downloads
work_dir=""                   # where data/ and exp/ go (default: this recipe's folder)
config=""                     # default: conf/ljspeech.yaml
exp_name=ljspeech
train_args=""
decode_args=""
recipe_options="stage stop_stage corpus_dir download_dir work_dir config exp_name train_args decode_args"
. "$(dirname "$0")/../parse_options.sh"

[ -n "$corpus_dir" ] && corpus_dir=$(realpath "$corpus_dir")
[ -n "$config" ] && config=$(realpath "$config")
recipe_dir=$(realpath "$(dirname "$0")")
config=${config:-$(realpath "$recipe_dir/../../conf/ljspeech.yaml")}
mkdir -p "${work_dir:=$recipe_dir}" && cd "$work_dir"
exp=exp/$exp_name
log() { echo "$(date +%H:%M:%S) [stage $1] ${*:2}"; }

if [ -z "$corpus_dir" ]; then
  [ $stage -le 0 ] && log 0 "download LJSpeech into $download_dir"
  corpus_dir=$(asr download ljspeech --dest "$download_dir")
fi

if [ $stage -le 1 ] && [ $stop_stage -ge 1 ]; then
  for split in train dev test; do
    log 1 "prepare $split -> data/$split.jsonl"
    asr prepare ljspeech --corpus-dir "$corpus_dir" --split $split --out data/$split.jsonl
  done
fi

train_set=train dev_set=dev test_set=test
. "$recipe_dir/../stages.sh"
