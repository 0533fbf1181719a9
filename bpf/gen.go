// Package bpf steers a LAN interface's outbound TCP connections for the
// intercepted ports into the gateway's transparent listener: it loads the TC
// ingress program, attaches it, fills its maps and installs the policy
// routing that makes steered packets local. It knows nothing of TLS.
package bpf

//go:generate go tool bpf2go -tags linux -target bpfel -type counter steer steer.c -- -I/usr/include/x86_64-linux-gnu -O2 -g -Wall -Werror
