//go:build tools

// Package tools pins the control-plane commands the e2e suite builds; build.sh
// builds each with `go build` from this module, so go.mod/go.sum decide every version.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
