# Sourced by the type checks: a staged tree of links that lays the packages out as installed (the folders mapped
# under flexnpu/, and testsupport/ as flexnpu_testsupport; see setup.py), since mypy and import-linter read
# packages from disk rather than through the editable install. Sets root, bin and stage; removes stage on exit.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=$(dirname "$(command -v python)")
[ -x "$bin/mypy" ] || bin=/work/venv/bin
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir "$stage/flexnpu"
for f in "$root"/flexnpu/*; do ln -s "$f" "$stage/flexnpu/"; done
for d in protos deviceplugin dra extender shim bench; do ln -s "$root/$d" "$stage/flexnpu/$d"; done
ln -s "$root/operator_" "$stage/flexnpu/operator"
ln -s "$root/testsupport" "$stage/flexnpu_testsupport"
