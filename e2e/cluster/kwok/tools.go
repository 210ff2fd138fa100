//go:build tools

// Package tools pins the kwok command; build.sh builds it from this module.
package tools

import _ "sigs.k8s.io/kwok/cmd/kwok"
