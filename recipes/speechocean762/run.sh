#!/usr/bin/env bash
# speechocean762 (OpenSLR 101, CC BY 4.0): read English from 250 Mandarin-L1 speakers, ~40% children.
# prepare -> train -> decode -> score, in stages:
#   recipes/speechocean762/run.sh --corpus-dir ../shared/data/speechocean762
#   recipes/speechocean762/run.sh --corpus-dir DIR --extra-train "$PWD/recipes/librispeech/data/train.jsonl" \
#       --extra-dev "$PWD/recipes/librispeech/data/dev.jsonl"      # train on both corpora, score both dev sets
# The corpus has train/ and test/ only (disjoint speakers): stage 1 holds out --dev-speakers training
# speakers as the dev set that picks best.pt, and the test set is scored at the end.
# The corpus is not downloaded here: fetch speechocean762 from openslr.org/101 (its folder holds
# train/, test/ and WAVE/) and pass it as --corpus-dir.
set -euo pipefail

stage=1
stop_stage=100
corpus_dir=""                 # the folder holding train/, test/ and WAVE/
work_dir=""                   # where data/ and exp/ go (default: this recipe's folder)
dev_speakers=10               # training speakers held out as the dev set
config=""                     # default: conf/whisper_bilstm_cpu.yaml on a CPU when its extra is installed
exp_name=""                   # default: named after the config
extra_train=""                # more training manifests (absolute paths), e.g. LibriSpeech's
extra_dev=""                  # more dev manifests (absolute paths), each scored after every epoch
train_args=""                 # config overrides, e.g. "train.max_minutes=120"
decode_args=""                # e.g. "--device cpu"
recipe_options="stage stop_stage corpus_dir work_dir dev_speakers config exp_name extra_train extra_dev train_args decode_args"
. "$(dirname "$0")/../parse_options.sh"

[ -n "$corpus_dir" ] && corpus_dir=$(realpath "$corpus_dir")
[ -n "$config" ] && config=$(realpath "$config")
recipe_dir=$(realpath "$(dirname "$0")")
root=$(realpath "$recipe_dir/../..")
mkdir -p "${work_dir:=$recipe_dir}" && cd "$work_dir"
. "$recipe_dir/../default_config.sh"
config=${config:-$(default_config)}
exp_name=${exp_name:-$(basename "$config" .yaml)}
exp=exp/$exp_name
log() { echo "$(date +%H:%M:%S) [stage $1] ${*:2}"; }

if [ $stage -le 1 ] && [ $stop_stage -ge 1 ]; then
  [ -n "$corpus_dir" ] || { echo "$0: --corpus-dir is required (the folder holding train/, test/ and WAVE/)" >&2; exit 2; }
  for split in train test; do
    log 1 "prepare $corpus_dir/$split -> data/$split.jsonl"
    asr prepare speechocean762 --corpus-dir "$corpus_dir" --split $split --out data/$split.jsonl
  done
  log 1 "hold out $dev_speakers training speakers -> data/train_rest.jsonl, data/dev.jsonl"
  asr split data/train.jsonl --held-out-speakers $dev_speakers --out-rest data/train_rest.jsonl --out-held data/dev.jsonl
fi

train_set=train_rest dev_set=dev test_set=test
train_manifests="data/train_rest.jsonl $extra_train"
dev_manifests="data/dev.jsonl $extra_dev"
. "$recipe_dir/../stages.sh"
