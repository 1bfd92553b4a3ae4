#!/usr/bin/env bash
# Install what the tests need and run lint, type check and the whole test suite.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/unit -k model).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh --test || exit 1
PY="$ROOT/.venv/bin"
status=0
echo "[test] ruff check"; "$PY/ruff" check . || status=1
echo "[test] ruff format --check"; "$PY/ruff" format --check . || status=1
echo "[test] mypy"; "$PY/mypy" || status=1
echo "[test] pytest"
"$PY/python" -m pytest -q -p no:cacheprovider "$@"
rc=$?
# pytest exits 5 when it collected no tests: that is a broken suite, not a pass.
if [[ $rc -eq 5 ]]; then echo "[test] pytest collected no tests" >&2; rc=1; fi
[[ $rc -ne 0 ]] && status=$rc
exit $status
