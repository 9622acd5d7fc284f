#!/usr/bin/env bash
# mypy --strict and import-linter over the packages as installed (the staged tree of .ci/stage.sh).
set -euo pipefail
# shellcheck source=stage.sh
. "$(dirname "$0")/stage.sh"
cd "$stage"
"$bin/mypy" -p flexnpu -p flexnpu_testsupport --config-file "$root/pyproject.toml" --cache-dir "$stage/.mypy_cache"
"$bin/lint-imports" "$root/.importlinter" --no-cache
