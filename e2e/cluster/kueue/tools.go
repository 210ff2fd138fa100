//go:build tools

// Package tools pins the Kueue manager; build.sh builds it from this module.
package tools

import _ "sigs.k8s.io/kueue/cmd/kueue"
