package main

import "github.com/snigate/snigate/bpf"

// steeringCounters names the eBPF program's packet counters as the status
// output and the metrics label them.
func steeringCounters(c bpf.Counters) map[string]uint64 {
	return map[string]uint64{
		"steered_new":         c.SteeredNew,
		"steered_established": c.SteeredEstablished,
		"passed":              c.Passed,
		"bypassed":            c.Bypassed,
		"no_listener":         c.NoListener,
		"assign_error":        c.AssignError,
		"unparsed":            c.Unparsed,
		"not_forwarded":       c.NotForwarded,
		"no_flow":             c.NoFlow,
		"fragment_dropped":    c.FragmentDropped,
		"quic_dropped":        c.QUICDropped,
	}
}
