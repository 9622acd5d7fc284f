#!/usr/bin/env bash
# mypy over tests/ (not --strict: untyped test functions and calls are allowed; everything else is checked), one
# folder at a time, since each is its own import root (conftest.py and the *_helpers.py modules repeat names).
# The product packages come from the same staged tree of links as .ci/typecheck.sh; they are checked there, so
# here they are followed silently. tests/realk8s is left out (its own harness, checked with its Go module).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$(dirname "$(command -v python)")
[ -x "$bin/mypy" ] || bin=/work/venv/bin
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir "$stage/flexnpu"
for f in "$root"/flexnpu/*; do ln -s "$f" "$stage/flexnpu/"; done
for d in protos deviceplugin extender shim bench; do ln -s "$root/$d" "$stage/flexnpu/$d"; done
ln -s "$root/operator_" "$stage/flexnpu/operator"
ln -s "$root/testsupport" "$stage/flexnpu_testsupport"
cd "$stage"
status=0
for dir in $(cd "$root" && find tests -name '*.py' -not -path 'tests/realk8s/*' -exec dirname {} \; | sort -u); do
    MYPYPATH="$stage:$root/$dir" "$bin/mypy" --config-file "$root/pyproject.toml" --cache-dir "$stage/.mypy_cache" \
        --follow-imports=silent --allow-untyped-defs --allow-incomplete-defs --allow-untyped-calls \
        --allow-untyped-decorators "$root/$dir"/*.py || status=1
done
exit "$status"
