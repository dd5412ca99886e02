#!/usr/bin/env bash
# LibriSpeech: download -> prepare -> train -> decode -> score, in stages.
#   recipes/librispeech/run.sh --corpus-dir ../shared/data/libri-other      # a local copy, all stages
#   recipes/librispeech/run.sh --stage 3 --stop-stage 4                      # only decode and score
#   recipes/librispeech/run.sh --train-set train-960 --dev-set dev-clean     # 960 h: the three training subsets
#   recipes/librispeech/run.sh --train-set "train-clean-100 train-clean-360"  # subsets combined into one manifest
# With --corpus-dir holding train/ and dev/ folders, those are the sets; otherwise LibriSpeech's names:
# train-clean-100 train-clean-360 train-other-500 dev-clean dev-other test-clean test-other, the
# combinations train-100 (= train-clean-100), train-460 (clean-100 + clean-360) and train-960 (all three),
# and mini LibriSpeech's train-clean-5 and dev-clean-2.
# Without --corpus-dir the corpus is downloaded (default: mini LibriSpeech, a quick check).
set -euo pipefail

stage=0
stop_stage=100
corpus_dir=""                 # local copy of the corpus; skips the download
download_dir=downloads
work_dir=""                   # where data/ and exp/ go (default: this recipe's folder)
train_set=""                  # default: train (local copy with train/ and dev/) or train-clean-5; several: "a b"
dev_set=""                    # default: dev or dev-clean-2
lm_files=""                   # also download these LM resources (openslr 11) into DOWNLOAD_DIR/lm, e.g.
                              # "librispeech-vocab.txt librispeech-lexicon.txt 3-gram.pruned.1e-7.arpa.gz 4-gram.arpa.gz"
config=""                     # default: conf/librispeech.yaml with a GPU, conf/librispeech_small.yaml without
exp_name=""                   # default: named after the config
train_args=""                 # config overrides, e.g. "train.max_minutes=45 train.lr=1e-3"
decode_args=""                # e.g. "--device cpu"
recipe_options="stage stop_stage corpus_dir download_dir work_dir train_set dev_set lm_files config exp_name train_args decode_args"
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
# A set is one subset or several combined into one manifest, named by the words joined with '+'.
subsets() {
  local word
  for word in $1; do
    case $word in
      train-100) echo train-clean-100 ;;
      train-460) echo train-clean-100 train-clean-360 ;;
      train-960) echo train-clean-100 train-clean-360 train-other-500 ;;
      *) echo "$word" ;;
    esac
  done
}
train_subsets=$(subsets "$train_set" | xargs)
dev_subsets=$(subsets "$dev_set" | xargs)
train_name=$(echo $train_set | tr ' ' '+')
dev_name=$(echo $dev_set | tr ' ' '+')
exp=exp/$exp_name
log() { echo "$(date +%H:%M:%S) [stage $1] ${*:2}"; }

if [ $stage -le 0 ] && [ $stop_stage -ge 0 ] && [ -z "$corpus_dir" ]; then
  log 0 "download $train_subsets $dev_subsets into $download_dir"
  case "$train_subsets $dev_subsets" in
    *clean-5*|*clean-2*) corpus=mini-librispeech ;;
    *) corpus=librispeech ;;
  esac
  # shellcheck disable=SC2086
  asr download $corpus --subsets $train_subsets $dev_subsets --dest "$download_dir"
fi
if [ $stage -le 0 ] && [ $stop_stage -ge 0 ] && [ -n "$lm_files" ]; then
  log 0 "download LM resources $lm_files into $download_dir/lm"
  # shellcheck disable=SC2086
  asr download librispeech-lm --subsets $lm_files --dest "$download_dir/lm"
fi
corpus_dir=${corpus_dir:-$(realpath "$download_dir")/LibriSpeech}

if [ $stage -le 1 ] && [ $stop_stage -ge 1 ]; then
  for set in "$train_name:$train_subsets" "$dev_name:$dev_subsets"; do
    name=${set%%:*}; dirs=()
    for subset in ${set#*:}; do dirs+=("$corpus_dir/$subset"); done
    log 1 "prepare ${dirs[*]} -> data/$name.jsonl"
    asr prepare librispeech --corpus-dir "${dirs[@]}" --out data/$name.jsonl
  done
fi

train_set=$train_name dev_set=$dev_name test_set=$dev_name
. "$recipe_dir/../stages.sh"
