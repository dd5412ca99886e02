# Kaldi-style option parsing for recipes: `--some-option value` sets the shell variable some_option,
# which the recipe must have defined with its default before sourcing this file. `--help` prints them.
while [ $# -gt 0 ]; do
  case "$1" in
    --help|-h)
      echo "usage: $0 [--option value ...]"; echo "options (default):"
      for v in $recipe_options; do printf '  --%s (%s)\n' "${v//_/-}" "${!v}"; done
      exit 0 ;;
    --*)
      name="${1#--}"; name="${name//-/_}"
      if [ -z "${name##*=*}" ]; then value="${name#*=}"; name="${name%%=*}"; shift
      else
        [ $# -ge 2 ] || { echo "$0: option $1 needs a value" >&2; exit 2; }
        value="$2"; shift 2
      fi
      case " $recipe_options " in
        *" $name "*) printf -v "$name" '%s' "$value" ;;
        *) echo "$0: unknown option --${name//_/-} (see --help)" >&2; exit 2 ;;
      esac ;;
    *) echo "$0: unexpected argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
