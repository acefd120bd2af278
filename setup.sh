#!/usr/bin/env bash
# The whole set-up on a fresh Debian machine, then one of two things:
#   ./setup.sh demo   install everything and run the demo on a local cluster
#   ./setup.sh test   install everything and run the test suite (what CI runs)
# Everything lands in ./.venv; system packages come from apt (run as root).
set -euo pipefail
cd "$(dirname "$0")"

need_apt=()
# python3-venv: `python3 -m venv` (Debian splits ensurepip out of python3);
# libfuse2/fuse3: the mount; attr, sqlite3, git, procps: tools the tests drive;
# util-linux (unshare, setpriv) is part of every Debian system.
for pkg in python3-venv libfuse2 fuse3 attr sqlite3 git procps; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing system packages: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# pip's output is filtered of two notices that say nothing about this
# install: pip's ignored index locations, and setuptools' "Editable
# installation" note (printed by every editable install, about a dozen
# lines; the import test checks what it warns of, fusepy's `fuse` against
# our folder). Other warnings still show. A failed install must stop the set-up, so pip's exit
# status is checked before the filter runs.
pip_install() {
  local out
  if ! out=$(.venv/bin/pip install -q --disable-pip-version-check "$@" 2>&1); then
    printf '%s\n' "$out" >&2
    echo "setup: pip install $* failed" >&2
    exit 1
  fi
  printf '%s\n' "$out" | awk '
    /BuildBackendWarning: Editable installation\./ { skip = 12; next }
    skip > 0 { skip--; if (/with strategy, WheelFile/) skip = 0; next }
    /^WARNING: Location/ || /^$/ { next }
    { print }'
}
pip_install --upgrade pip setuptools wheel
pip_install -e '.[test]'
export PATH="$PWD/.venv/bin:$PATH"

case "${1:-}" in
  demo)
    exec .venv/bin/cistern demo
    ;;
  test)
    shift
    # importlib mode keeps the repository root off sys.path, so `import fuse`
    # is fusepy (see pyproject.toml). -x is not used: one failure should not
    # hide the others.
    exec .venv/bin/pytest -q -ra "$@"
    ;;
  *)
    echo "usage: ./setup.sh demo|test [pytest args]" >&2
    exit 2
    ;;
esac
