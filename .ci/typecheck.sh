#!/usr/bin/env bash
# mypy --strict and import-linter over the packages as installed: folders mapped under flexnpu/, and testsupport/
# as flexnpu_testsupport (see setup.py).
# Both tools read packages from disk, so they get a staged tree of links rather than the editable install.
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
"$bin/mypy" -p flexnpu -p flexnpu_testsupport --config-file "$root/pyproject.toml" --cache-dir "$stage/.mypy_cache"
"$bin/lint-imports" "$root/.importlinter" --no-cache
