#!/usr/bin/env bash
# CMU AN4 (census database, ~50 min train / 130 test utterances, SPHERE audio):
# download -> prepare -> train -> decode -> score, in stages.
#   recipes/an4/run.sh                                   # downloads an4_sphere.tar.gz (64 MB)
#   recipes/an4/run.sh --corpus-dir /data/an4            # a local copy: the folder holding etc/ and wav/
#   recipes/an4/run.sh --stage 3 --stop-stage 4          # only decode and score
# AN4 has no dev set: the test set validates training (as in the deepspeech.pytorch AN4 recipe).
set -euo pipefail

stage=0
stop_stage=100
corpus_dir=""                 # local copy (the an4 folder); skips the download
download_dir=downloads
work_dir=""                   # where data/ and exp/ go (default: this recipe's folder)
config=""                     # default: conf/an4.yaml
exp_name=an4
train_args=""                 # config overrides, e.g. "train.epochs=60"
decode_args=""                # e.g. "--device cpu"
recipe_options="stage stop_stage corpus_dir download_dir work_dir config exp_name train_args decode_args"
. "$(dirname "$0")/../parse_options.sh"

[ -n "$corpus_dir" ] && corpus_dir=$(realpath "$corpus_dir")
[ -n "$config" ] && config=$(realpath "$config")
recipe_dir=$(realpath "$(dirname "$0")")
config=${config:-$(realpath "$recipe_dir/../../conf/an4.yaml")}
mkdir -p "${work_dir:=$recipe_dir}" && cd "$work_dir"
exp=exp/$exp_name
log() { echo "$(date +%H:%M:%S) [stage $1] ${*:2}"; }

if [ -z "$corpus_dir" ]; then
  # Stage 0 (checksummed where published, resumable, extracted once); later stages need the path
  # too, and a second call downloads nothing.
  [ $stage -le 0 ] && log 0 "download AN4 into $download_dir"
  corpus_dir=$(asr download an4 --dest "$download_dir")
fi

if [ $stage -le 1 ] && [ $stop_stage -ge 1 ]; then
  for split in train test; do
    log 1 "prepare $split -> data/$split.jsonl"
    asr prepare an4 --corpus-dir "$corpus_dir" --split $split --out data/$split.jsonl
  done
fi

train_set=train dev_set=test test_set=test
. "$recipe_dir/../stages.sh"
