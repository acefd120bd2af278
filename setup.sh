#!/usr/bin/env bash
# The whole set-up on a fresh Debian machine, then one of two things:
#   ./setup.sh demo   install everything and run the demo on a local cluster
#   ./setup.sh test   install everything and run the test suite (what CI runs)
# Everything lands in ./.venv; system packages come from apt (run as root).
set -euo pipefail
cd "$(dirname "$0")"

need_apt=()
for pkg in libfuse2 fuse3 attr sqlite3 git; do
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
.venv/bin/pip install -q --disable-pip-version-check --upgrade pip setuptools wheel 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | grep -v '^WARNING: Location' || true
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
