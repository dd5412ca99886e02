# Stages 2-4 shared by every corpus recipe: train on
# data/$train_set.jsonl validating on data/$dev_set.jsonl, decode data/$test_set.jsonl with the best
# checkpoint, score it into $exp/wer.txt. The recipe sets stage, stop_stage, config, exp, work_dir,
# train_set, dev_set, test_set, train_args, decode_args and log() before sourcing this file; it may set
# train_manifests / dev_manifests (space-separated paths) to train or validate on several manifests.

if [ $stage -le 2 ] && [ $stop_stage -ge 2 ]; then
  log 2 "train $config -> $exp"
  # --resume continues an interrupted run, and only with the config it was trained with (asr train stops
  # naming the changed keys otherwise, except asr/training/resume.py RESUME_SAFE_KEYS): a changed config
  # needs another --exp-name, or --train-args "--force-resume ..." to continue the run with it.
  # shellcheck disable=SC2086
  asr train --config "$config" --train ${train_manifests:-data/$train_set.jsonl} --dev ${dev_manifests:-data/$dev_set.jsonl} \
    --out $exp --resume $train_args
  asr plot $exp || true
fi

if [ $stage -le 3 ] && [ $stop_stage -ge 3 ]; then
  log 3 "decode data/$test_set.jsonl with $exp/best.pt"
  # shellcheck disable=SC2086
  asr decode $exp/best.pt data/$test_set.jsonl --out $exp/decode_$test_set/hyp.txt $decode_args
fi

if [ $stage -le 4 ] && [ $stop_stage -ge 4 ]; then
  log 4 "score $exp/decode_$test_set/hyp.txt"
  asr score data/$test_set.jsonl $exp/decode_$test_set/hyp.txt --out $exp/decode_$test_set/wer.txt
  cp $exp/decode_$test_set/wer.txt $exp/wer.txt
  log 4 "wrote $work_dir/$exp/wer.txt"
fi
