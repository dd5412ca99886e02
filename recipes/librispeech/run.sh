#!/usr/bin/env bash
# LibriSpeech: download -> prepare -> train -> decode -> score, in stages.
#   recipes/librispeech/run.sh --corpus-dir ../shared/data/libri-other      # a local copy, all stages
#   recipes/librispeech/run.sh --stage 3 --stop-stage 4                      # only decode and score
#   recipes/librispeech/run.sh --stage 5 --lm-text ../shared/data/lm/gutenberg-100M.txt.gz \
#       --lm-vocab ../shared/data/lm/librispeech-vocab.txt                 # n-gram LMs, tuning, beam-lm decoding
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
config=""                     # default: conf/librispeech.yaml with a GPU; on a CPU conf/whisper_bilstm_cpu.yaml
                              # (pretrained extra installed) or else conf/librispeech_small.yaml
exp_name=""                   # default: named after the config
train_args=""                 # config overrides, e.g. "train.max_minutes=45 train.lr=1e-3"
decode_args=""                # e.g. "--device cpu"
# Stages 5-7 (n-gram LM, beam-lm decoding): run when lm_text is given or the official ARPA files were downloaded.
lm_text=""                    # text to build n-gram LMs from (asr lm build normalizes it), e.g.
                              # ../shared/data/lm/gutenberg-100M.txt.gz or the downloaded librispeech-lm-norm.txt.gz.
                              # Never put dev/test transcripts in it.
lm_vocab=""                   # closed vocabulary for the LMs and the lexicon, e.g. librispeech-vocab.txt
lm_orders="3 4"               # one LM per order; the last one's tuned settings become $exp/decode.yaml
lm_prune="0 0 1 1"            # per-order count thresholds (asr lm build --prune), cut to each order
tune_args="--max-utts 100 --beam-size 50 --lm-weights 0.5 1 1.5 2 2.5 --word-scores -1 0 1 2"
recipe_options="stage stop_stage corpus_dir download_dir work_dir train_set dev_set lm_files config exp_name train_args decode_args lm_text lm_vocab lm_orders lm_prune tune_args"
. "$(dirname "$0")/../parse_options.sh"

# Paths given on the command line are relative to where the recipe was started.
[ -n "$corpus_dir" ] && corpus_dir=$(realpath "$corpus_dir")
[ -n "$config" ] && config=$(realpath "$config")
[ -n "$lm_text" ] && lm_text=$(realpath "$lm_text")
[ -n "$lm_vocab" ] && lm_vocab=$(realpath "$lm_vocab")
recipe_dir=$(realpath "$(dirname "$0")")
root=$(realpath "$recipe_dir/../..")
mkdir -p "${work_dir:=$recipe_dir}" && cd "$work_dir"

if [ -n "$corpus_dir" ] && [ -d "$corpus_dir/train" ] && [ -d "$corpus_dir/dev" ]; then
  train_set=${train_set:-train}; dev_set=${dev_set:-dev}
else
  train_set=${train_set:-train-clean-5}; dev_set=${dev_set:-dev-clean-2}
fi
. "$recipe_dir/../default_config.sh"
config=${config:-$(default_config "$root/conf/librispeech.yaml" "$root/conf/librispeech_small.yaml")}
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

# The LMs: built from lm_text, or else the official ARPA files if stage 0 downloaded them.
lm_dir=data/lm
official_lm() {
  case $1 in 3) echo "$download_dir/lm/3-gram.pruned.1e-7.arpa.gz" ;; 4) echo "$download_dir/lm/4-gram.arpa.gz" ;; esac
}
have_lm() { [ -n "$lm_text" ] || [ -f "$(official_lm "${lm_orders##* }")" ]; }

if [ $stage -le 5 ] && [ $stop_stage -ge 5 ] && have_lm; then
  mkdir -p $lm_dir
  for order in $lm_orders; do
    if [ -n "$lm_text" ]; then
      prune=$(echo $lm_prune | cut -d' ' -f1-$order)
      log 5 "build a ${order}-gram from $lm_text -> $lm_dir/${order}gram.arpa"
      # shellcheck disable=SC2086
      asr lm build "$lm_text" --order $order --prune $prune ${lm_vocab:+--vocab "$lm_vocab"} --out $lm_dir/${order}gram.arpa
    else
      log 5 "unpack $(official_lm $order) -> $lm_dir/${order}gram.arpa"
      gzip -dc "$(official_lm $order)" | tr 'A-Z' 'a-z' > $lm_dir/${order}gram.arpa  # LibriSpeech's LMs are upper case
    fi
  done
  log 5 "spelling lexicon -> $lm_dir/lexicon.txt"
  asr lm lexicon ${lm_vocab:-$lm_dir/${lm_orders%% *}gram.arpa} --out $lm_dir/lexicon.txt
fi

if [ $stage -le 6 ] && [ $stop_stage -ge 6 ] && have_lm; then
  for order in $lm_orders; do
    log 6 "tune lm_weight and word_score of the ${order}-gram on data/$dev_set.jsonl -> $exp/decode_${order}gram.yaml"
    # shellcheck disable=SC2086
    python "$root/scripts/tune_decoder.py" $exp/best.pt data/$dev_set.jsonl --lm $lm_dir/${order}gram.arpa \
      --lexicon $lm_dir/lexicon.txt --out $exp/decode_${order}gram.yaml $tune_args
  done
  # `asr transcribe $exp/best.pt` and `asr decode` use the last order's settings from now on.
  cp $exp/decode_${order}gram.yaml $exp/decode.yaml
fi

if [ $stage -le 7 ] && [ $stop_stage -ge 7 ] && have_lm; then
  for order in $lm_orders; do
    out=$exp/decode_${test_set}_${order}gram
    log 7 "decode data/$test_set.jsonl with beam-lm (${order}-gram) -> $out"
    # shellcheck disable=SC2086
    asr decode $exp/best.pt data/$test_set.jsonl --decode-config $exp/decode_${order}gram.yaml --out $out/hyp.txt $decode_args
    asr score data/$test_set.jsonl $out/hyp.txt --out $out/wer.txt
    log 7 "$(grep '^%WER' $out/wer.txt) (${order}-gram)"
  done
fi
