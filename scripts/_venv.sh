# Sourced by scripts/demo and scripts/test, with the extra to install: make .venv and
# install the project into it with that extra.
#   source scripts/_venv.sh taskapi   # the demo: the package and what taskapi runs
#   source scripts/_venv.sh agents    # scripts/agents-demo: the openai client, the stand-in
#   source scripts/_venv.sh dev       # the tests: all of taskapi's, linters, test servers
# Both share .venv. A stamp per extra, named after pyproject.toml's hash, says what is
# installed: an extra is installed again only when pyproject.toml changed since. dev
# holds everything taskapi does (tests/test_scripts.py checks it), so a demo after a
# test run installs nothing, and a test run after a demo installs what dev adds.
set -euo pipefail
venv_extra="${1:?usage: source scripts/_venv.sh EXTRA (taskapi, agents or dev)}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "tidings needs Python >= 3.11; set PYTHON=/path/to/python3.11 or newer" >&2
  exit 2
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
venv_hash="$(sha256sum pyproject.toml | cut -c1-16)"
venv_has() {  # whether extra $1 is installed for this pyproject.toml
  [ -f ".venv/.installed-$1-$venv_hash" ] && return 0
  case "$1" in
    taskapi | agents) venv_has dev ;;
    dev) [ -f ".venv/.installed-$venv_hash" ] ;;  # the stamp of the dev-only days
    *) return 1 ;;
  esac
}
if ! venv_has "$venv_extra"; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[$venv_extra]"
  for stamp in .venv/.installed-*; do  # another pyproject.toml's: out of date
    case "$stamp" in *"-$venv_hash") ;; *) rm -f "$stamp" ;; esac
  done
  touch ".venv/.installed-$venv_extra-$venv_hash"
fi
export PATH="$root/.venv/bin:$PATH"
