# The config a recipe trains when none is given: the corpus's GPU config on a machine with CUDA;
# on a CPU the frozen-pretrained-encoder config when its extra (ctranslate2 + an encoder) is
# installed, since that is what reaches usable accuracy in CPU-hours, else the small log-mel one.
# Usage: . recipes/default_config.sh; config=${config:-$(default_config [GPU_CONFIG] [CPU_LOGMEL_CONFIG])}
default_config() {
  local gpu=${1:-$root/conf/librispeech.yaml} cpu_logmel=${2:-$root/conf/librispeech_small.yaml}
  if python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "$gpu"
  elif python -c 'from asr.frontend.whisper import find_encoder; import ctranslate2; find_encoder()' 2>/dev/null; then
    echo "$root/conf/whisper_bilstm_cpu.yaml"
  else
    echo "no pretrained encoder installed (pip install \"asr[pretrained]\"): training log-mel features from scratch" >&2
    echo "$cpu_logmel"
  fi
}
