#!/usr/bin/env bash
# Build the e2e control plane (kube-apiserver, kube-controller-manager, kube-scheduler,
# etcd, kwok) and Kueue from the Go modules pinned in this folder's go.mod/go.sum,
# kwok/go.mod and kueue/go.mod, into a cache outside the repository. Built once; rebuilt
# only when the pins (the go.mod/go.sum files, this script, etcd/main.go) change. Prints
# the directory holding the binaries (and kueue-config/: Kueue's CRDs and webhook
# manifests from the same module, which e2e/cluster/controlplane.py applies).
#
#   GREENML_E2E_CACHE   cache root (default ~/.cache/greenml/e2e)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache_root="${GREENML_E2E_CACHE:-$HOME/.cache/greenml/e2e}"
pins="$(cat "$here/go.mod" "$here/go.sum" "$here/kwok/go.mod" "$here/kwok/go.sum" "$here/kueue/go.mod" \
  "$here/kueue/go.sum" "$here/build.sh" "$here/etcd/main.go" | sha256sum | cut -c1-16)"
release="$(awk '$1=="k8s.io/kubernetes"{print $2; exit}' "$here/go.mod")"
out="$cache_root/$release-$pins"
bins=(kube-apiserver kube-controller-manager kube-scheduler etcd kwok kueue)
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
# Kueue has its own module too (kueue/go.mod: its release pins its own k8s.io/* and
# controller-runtime). Its CRDs and webhook manifests come from the same module version.
kueue_start=$(date +%s)
kueue_release="$(awk '$1=="require" && $2=="sigs.k8s.io/kueue"{print $3; exit}' "$here/kueue/go.mod")"
(cd kueue && go build -trimpath -ldflags "-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=$kueue_release" \
    -o "$out.tmp/" sigs.k8s.io/kueue/cmd/kueue \
  && kdir="$(go list -m -f '{{.Dir}}' sigs.k8s.io/kueue)" \
  && mkdir -p "$out.tmp/kueue-config/webhook" \
  && cp -r "$kdir/config/components/crd/." "$out.tmp/kueue-config/crd" \
  && cp "$kdir/config/components/webhook/manifests.yaml" "$out.tmp/kueue-config/webhook/" \
  && chmod -R u+w "$out.tmp/kueue-config") >&2
echo "build.sh: kueue built in $(( $(date +%s) - kueue_start )) s" >&2
rm -rf "$out" && mv "$out.tmp" "$out"
echo "build.sh: built ${bins[*]} ($release) in $(( $(date +%s) - start )) s into $out" >&2
echo "$out"
