package main

import (
	"os"
	"runtime/debug"
	"testing"
)

// The daemon raises GOGC unless the operator's environment sets it.
func TestTuneGC(t *testing.T) {
	orig := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(orig) })

	tests := []struct {
		name string
		env  string // "" leaves GOGC unset
		want int
	}{
		{name: "unset", want: gatewayGCPercent},
		{name: "operator's value kept", env: "50", want: 100},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.env != "" {
				t.Setenv("GOGC", tt.env)
			} else {
				t.Setenv("GOGC", "")
				unsetenv(t, "GOGC")
			}
			debug.SetGCPercent(100)
			tuneGC()
			if got := debug.SetGCPercent(100); got != tt.want {
				t.Errorf("GC percent after tuneGC = %d, want %d", got, tt.want)
			}
		})
	}
}

// unsetenv removes key for the rest of the test; t.Setenv before it
// restores the original value afterwards.
func unsetenv(t *testing.T, key string) {
	t.Helper()
	if err := os.Unsetenv(key); err != nil {
		t.Fatal(err)
	}
}
