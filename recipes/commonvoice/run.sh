#!/usr/bin/env bash
# Mozilla Common Voice, any language: prepare -> train -> decode -> score, in stages.
# Common Voice cannot be fetched unattended (its site asks for agreement to its terms), so stage 0
# unpacks the archive you downloaded (or fetches the download link it gave you, resumably):
#   recipes/commonvoice/run.sh --archive ~/Downloads/cv-corpus-17.0-2024-03-15-en.tar.gz
#   recipes/commonvoice/run.sh --corpus-dir /data/cv-corpus-17.0-2024-03-15/en      # already unpacked
# Sets are the release's train.tsv / dev.tsv / test.tsv; --train-set validated uses every validated clip
# (which overlaps dev and test). The trainer's alphabet is English a-z: other languages need --keep-script
# and a tokenizer for them.
set -euo pipefail

stage=0
stop_stage=100
corpus_dir=""                 # the unpacked language folder; skips stage 0
archive=""                    # the downloaded .tar.gz, or its download link
download_dir=downloads
work_dir=""                   # where data/ and exp/ go (default: this recipe's folder)
train_set=train
dev_set=dev
test_set=test
max_duration=20               # skip longer clips when preparing (s)
prepare_args=""               # e.g. "--keep-script"
config=""                     # default: conf/commonvoice.yaml
exp_name=commonvoice
train_args=""
decode_args=""
recipe_options="stage stop_stage corpus_dir archive download_dir work_dir train_set dev_set test_set max_duration prepare_args config exp_name train_args decode_args"
. "$(dirname "$0")/../parse_options.sh"

[ -n "$corpus_dir" ] && corpus_dir=$(realpath "$corpus_dir")
[ -n "$config" ] && config=$(realpath "$config")
case "$archive" in *://*|"") ;; *) archive=$(realpath "$archive") ;; esac
recipe_dir=$(realpath "$(dirname "$0")")
config=${config:-$(realpath "$recipe_dir/../../conf/commonvoice.yaml")}
mkdir -p "${work_dir:=$recipe_dir}" && cd "$work_dir"
exp=exp/$exp_name
log() { echo "$(date +%H:%M:%S) [stage $1] ${*:2}"; }

if [ -z "$corpus_dir" ]; then
  if [ -z "$archive" ]; then
    echo "$0: Common Voice is downloaded by hand from https://commonvoice.mozilla.org/datasets;" \
         "pass the archive with --archive FILE_OR_LINK, or the unpacked language folder with --corpus-dir" >&2
    exit 2
  fi
  [ $stage -le 0 ] && log 0 "unpack $archive into $download_dir"
  corpus_dir=$(asr download commonvoice --archive "$archive" --dest "$download_dir")
fi

if [ $stage -le 1 ] && [ $stop_stage -ge 1 ]; then
  for set in $train_set $dev_set $test_set; do
    log 1 "prepare $set -> data/$set.jsonl"
    # shellcheck disable=SC2086
    asr prepare commonvoice --corpus-dir "$corpus_dir" --split $set --max-duration "$max_duration" \
      --out data/$set.jsonl $prepare_args
  done
fi

. "$recipe_dir/../stages.sh"
