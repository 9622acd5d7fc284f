#!/usr/bin/env bash
# Build the realk8s multi-call binary (upstream etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kubelet + our CRI) into a cache dir
# outside the repo. Rebuilds only when go.mod, go.sum or the sources changed.
#
#   tests/realk8s/build.sh            # prints the binary path on the last line
#   FLEXNPU_REALK8S_BIN_DIR=DIR tests/realk8s/build.sh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
src="$here/go"
bin_dir="${FLEXNPU_REALK8S_BIN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/flexnpu-realk8s/bin}"
bin="$bin_dir/realk8s"
stamp="$bin_dir/realk8s.inputs"

export GOFLAGS="${GOFLAGS:--buildvcs=false}"
mkdir -p "$bin_dir"

# The version the components report (kube-apiserver's /version, which Helm and kubectl read): the release of
# k8s.io/kubernetes in go.mod, as upstream's own build stamps it (without it: v0.0.0-master+$Format:%H$).
kver="$(cd "$src" && go list -m -f '{{.Version}}' k8s.io/kubernetes)"
minor="${kver#v1.}"; minor="${minor%%.*}"
ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$kver -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done

# Fingerprint of every input that changes the binary.
inputs="$(cd "$src" && { go version; echo "$ldflags"; find . -type f \( -name '*.go' -o -name go.mod -o -name go.sum \) -print0 \
  | sort -z | xargs -0 sha256sum; } | sha256sum | cut -d' ' -f1)"

if [[ -x "$bin" && -f "$stamp" && "$(cat "$stamp")" == "$inputs" ]]; then
  echo "realk8s: up to date (build time 0s)" >&2
  echo "$bin"
  exit 0
fi

start=$(date +%s)
(cd "$src" && nice -n 10 go build -trimpath -ldflags "$ldflags" -o "$bin.tmp" ./cmd/realk8s)
mv "$bin.tmp" "$bin"
echo "$inputs" > "$stamp"
echo "realk8s: built $bin in $(( $(date +%s) - start ))s" >&2
echo "$bin"
