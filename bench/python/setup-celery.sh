#!/usr/bin/env bash
# Makes the virtual environment that group `cluster` of multiprocess-bench runs Celery from:
# target/bench-venv at the repository's root (or the directory given as $1), made with
# `$PYTHON -m venv` (default python3), with `pip install celery[redis]` at the version below
# ($CELERY_SPEC overrides it). Does nothing when the environment already imports that version, so
# the harness runs it before every `cluster` group; a clean machine (CI) gets it installed here.
#
#   bench/python/setup-celery.sh                 # target/bench-venv
#   CELERY_SPEC='celery[redis]' bench/python/setup-celery.sh /tmp/venv   # the newest Celery
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${1:-$root/target/bench-venv}"
python="${PYTHON:-python3}"
spec="${CELERY_SPEC:-celery[redis]==5.7.0}"
# The version the spec pins, if it pins one.
pinned=""
case "$spec" in *==*) pinned="${spec##*==}" ;; esac
# Already there: Celery (at the pinned version, if any) and the Redis client it needs.
if [ -x "$venv/bin/python" ] && "$venv/bin/python" - "$pinned" <<'EOF' 2>/dev/null; then
import sys
import celery, redis  # noqa: F401  (the broker's and the result backend's client)
sys.exit(0 if sys.argv[1] in ("", celery.__version__) else 1)
EOF
    exit 0
fi
echo "setup-celery: making $venv with $("$python" --version 2>&1) and installing $spec" >&2
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$spec"
"$venv/bin/python" -c 'import celery, redis; print("setup-celery: celery", celery.__version__, "redis-py", redis.__version__)' >&2
