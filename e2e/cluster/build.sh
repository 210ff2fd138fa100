#!/usr/bin/env bash
# Build the e2e control plane (kube-apiserver, kube-controller-manager, kube-scheduler,
# etcd, kwok) from the Go modules pinned in this folder's go.mod/go.sum, into a cache
# outside the repository. Built once; rebuilt only when the pins (go.mod, go.sum, this
# script, etcd/main.go) change. Prints the directory holding the binaries.
#
#   GREENML_E2E_CACHE   cache root (default ~/.cache/greenml/e2e)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache_root="${GREENML_E2E_CACHE:-$HOME/.cache/greenml/e2e}"
pins="$(cat "$here/go.mod" "$here/go.sum" "$here/kwok/go.mod" "$here/kwok/go.sum" "$here/build.sh" \
  "$here/etcd/main.go" | sha256sum | cut -c1-16)"
release="$(awk '$1=="k8s.io/kubernetes"{print $2; exit}' "$here/go.mod")"
out="$cache_root/$release-$pins"
bins=(kube-apiserver kube-controller-manager kube-scheduler etcd kwok)
ok=1
for b in "${bins[@]}"; do [[ -x "$out/$b" ]] || ok=0; done
if [[ $ok == 1 ]]; then echo "$out"; exit 0; fi

command -v go >/dev/null || { echo "build.sh: Go is required to build the e2e control plane" >&2; exit 1; }
rm -rf "$out.tmp" && mkdir -p "$out.tmp"
cd "$here"
start=$(date +%s)
export CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false"
# Stamp the version the binaries report (/version, `kubectl version`), as kube's release
# build does (hack/lib/version.sh): a plain module build says v0.0.0-master+$Format:%H$,
# and `helm install` then rejects any chart with a kubeVersion constraint (ours: >=1.25.0-0).
ver="${release#v}"; major="${ver%%.*}"; minor="${ver#*.}"; minor="${minor%%.*}"
stamp=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  stamp+=" -X $pkg.gitVersion=$release -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done
# One `go build` for the four of this module shares the compile of their common packages;
# kwok has its own module (kwok/go.mod: it needs older k8s.io libraries).
go build -trimpath -ldflags "-s -w$stamp" -o "$out.tmp/" \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler \
  ./etcd >&2
(cd kwok && go build -trimpath -ldflags "-s -w" -o "$out.tmp/" sigs.k8s.io/kwok/cmd/kwok) >&2
rm -rf "$out" && mv "$out.tmp" "$out"
echo "build.sh: built ${bins[*]} ($release) in $(( $(date +%s) - start )) s into $out" >&2
echo "$out"
