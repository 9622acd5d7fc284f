#!/usr/bin/env bash
# mypy over tests/ (not --strict: untyped test functions and calls are allowed; everything else is checked), one
# folder at a time, since each is its own import root (conftest.py and the *_helpers.py modules repeat names).
# The product packages come from the staged tree of .ci/stage.sh; they are checked by .ci/typecheck.sh, so here
# they are followed silently. tests/realk8s, the real-Kubernetes harness, is checked with --strict.
set -euo pipefail
# shellcheck source=stage.sh
. "$(dirname "$0")/stage.sh"
cd "$stage"
status=0
for dir in $(cd "$root" && find tests -name '*.py' -not -path 'tests/realk8s/*' -exec dirname {} \; | sort -u); do
    MYPYPATH="$stage:$root/$dir" "$bin/mypy" --config-file "$root/pyproject.toml" --cache-dir "$stage/.mypy_cache" \
        --follow-imports=silent --allow-untyped-defs --allow-incomplete-defs --allow-untyped-calls \
        --allow-untyped-decorators "$root/$dir"/*.py || status=1
done
MYPYPATH="$stage:$root/tests/realk8s" "$bin/mypy" --strict --config-file "$root/pyproject.toml" \
    --cache-dir "$stage/.mypy_cache" --follow-imports=silent "$root"/tests/realk8s/*.py || status=1
exit "$status"
