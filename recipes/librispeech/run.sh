#!/usr/bin/env bash
# LibriSpeech: download -> prepare -> train -> decode -> score, in stages.
#   recipes/librispeech/run.sh --corpus-dir ../shared/data/libri-other      # a local copy, all stages
#   recipes/librispeech/run.sh --stage 3 --stop-stage 4                      # only decode and score
# With --corpus-dir holding train/ and dev/ folders, those are the sets; otherwise LibriSpeech's names.
# Without --corpus-dir the corpus is downloaded (default: mini LibriSpeech, a quick check).
set -euo pipefail

stage=0
stop_stage=100
corpus_dir=""                 # local copy of the corpus; skips the download
download_dir=downloads
work_dir=""                   # where data/ and exp/ go (default: this recipe's folder)
train_set=""                  # default: train (local copy with train/ and dev/) or train-clean-5
dev_set=""                    # default: dev or dev-clean-2
config=""                     # default: conf/librispeech.yaml with a GPU, conf/librispeech_small.yaml without
exp_name=""                   # default: named after the config
train_args=""                 # config overrides, e.g. "train.max_minutes=45 train.lr=1e-3"
decode_args=""                # e.g. "--device cpu"
recipe_options="stage stop_stage corpus_dir download_dir work_dir train_set dev_set config exp_name train_args decode_args"
. "$(dirname "$0")/../parse_options.sh"

# Paths given on the command line are relative to where the recipe was started.
[ -n "$corpus_dir" ] && corpus_dir=$(realpath "$corpus_dir")
[ -n "$config" ] && config=$(realpath "$config")
recipe_dir=$(realpath "$(dirname "$0")")
root=$(realpath "$recipe_dir/../..")
mkdir -p "${work_dir:=$recipe_dir}" && cd "$work_dir"

if [ -n "$corpus_dir" ] && [ -d "$corpus_dir/train" ] && [ -d "$corpus_dir/dev" ]; then
  train_set=${train_set:-train}; dev_set=${dev_set:-dev}
else
  train_set=${train_set:-train-clean-5}; dev_set=${dev_set:-dev-clean-2}
fi
if [ -z "$config" ]; then
  if python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    config=$root/conf/librispeech.yaml
  else
    config=$root/conf/librispeech_small.yaml
  fi
fi
exp_name=${exp_name:-$(basename "$config" .yaml)}
exp=exp/$exp_name
log() { echo "$(date +%H:%M:%S) [stage $1] ${*:2}"; }

if [ $stage -le 0 ] && [ $stop_stage -ge 0 ] && [ -z "$corpus_dir" ]; then
  log 0 "download $train_set $dev_set into $download_dir"
  case "$train_set $dev_set" in
    *clean-5*|*clean-2*) corpus=mini-librispeech ;;
    *) corpus=librispeech ;;
  esac
  asr download $corpus --subsets $train_set $dev_set --dest "$download_dir"
fi
corpus_dir=${corpus_dir:-$(realpath "$download_dir")/LibriSpeech}

if [ $stage -le 1 ] && [ $stop_stage -ge 1 ]; then
  for set in $train_set $dev_set; do
    log 1 "prepare $corpus_dir/$set -> data/$set.jsonl"
    asr prepare librispeech --corpus-dir "$corpus_dir/$set" --out data/$set.jsonl
  done
fi

if [ $stage -le 2 ] && [ $stop_stage -ge 2 ]; then
  log 2 "train $config -> $exp"
  # shellcheck disable=SC2086
  asr train --config "$config" --train data/$train_set.jsonl --dev data/$dev_set.jsonl --out $exp --resume $train_args
  asr plot $exp || true
fi

if [ $stage -le 3 ] && [ $stop_stage -ge 3 ]; then
  log 3 "decode data/$dev_set.jsonl with $exp/best.pt"
  # shellcheck disable=SC2086
  asr decode $exp/best.pt data/$dev_set.jsonl --out $exp/decode_$dev_set/hyp.txt $decode_args
fi

if [ $stage -le 4 ] && [ $stop_stage -ge 4 ]; then
  log 4 "score $exp/decode_$dev_set/hyp.txt"
  asr score data/$dev_set.jsonl $exp/decode_$dev_set/hyp.txt --out $exp/decode_$dev_set/wer.txt
  cp $exp/decode_$dev_set/wer.txt $exp/wer.txt
  log 4 "wrote $work_dir/$exp/wer.txt"
fi
