package main

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

func TestParseStat(t *testing.T) {
	tests := []struct {
		name      string
		line      string
		wantPPID  int
		wantTicks int64
		wantErr   bool
	}{
		{
			name: "plain",
			line: "42 (squid) S 7 42 42 0 -1 4194560 100 0 0 0 150 30 2 1 20 0 1 0 99 0 0",
			// utime 150 + stime 30 + cutime 2 + cstime 1
			wantPPID: 7, wantTicks: 183,
		},
		{
			name:     "name with spaces and parentheses",
			line:     "9 (a) b (c) R 1 9 9 0 -1 0 0 0 0 0 5 5 0 0 20 0 1 0 1 0 0",
			wantPPID: 1, wantTicks: 10,
		},
		{name: "no name", line: "9 squid R 1", wantErr: true},
		{name: "truncated", line: "9 (squid) R 1 9 9", wantErr: true},
		{name: "bad number", line: "9 (x) R 1 9 9 0 -1 0 0 0 0 0 x 5 0 0 20", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, err := parseStat([]byte(tt.line))
			if tt.wantErr {
				if err == nil {
					t.Fatalf("parseStat(%q) = %+v, want an error", tt.line, st)
				}
				return
			}
			if err != nil || st.ppid != tt.wantPPID || st.ticks != tt.wantTicks {
				t.Fatalf("parseStat = %+v, %v; want ppid %d ticks %d",
					st, err, tt.wantPPID, tt.wantTicks)
			}
		})
	}
}

// TestTreeUsage reads this process with a child of its own, as the
// benchmark reads Squid with its worker and helpers.
func TestTreeUsage(t *testing.T) {
	child := exec.Command("sleep", "30")
	if err := child.Start(); err != nil {
		t.Skipf("cannot start a child: %v", err)
	}
	t.Cleanup(func() { child.Process.Kill(); child.Wait() })

	u, err := treeUsage(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if u.Procs < 2 || u.RSSKiB <= 0 || u.FDs <= 0 || u.CPUSeconds < 0 {
		t.Errorf("treeUsage(self) = %+v, want 2+ processes, memory and descriptors", u)
	}
	if _, err := treeUsage(1 << 30); err == nil {
		t.Error("treeUsage of a pid that cannot exist succeeded")
	}
}

func TestParseMetrics(t *testing.T) {
	text := "# HELP go_goroutines Number of goroutines.\n" +
		"# TYPE go_goroutines gauge\ngo_goroutines 4011\ngo_threads 9\n"
	if g, err := parseMetrics(strings.NewReader(text), "go_goroutines"); err != nil || g[0] != 4011 {
		t.Errorf("parseMetrics = %v, %v; want 4011", g, err)
	}
	if _, err := parseMetrics(strings.NewReader("go_threads 9\n"), "go_goroutines"); err == nil {
		t.Error("parseMetrics without the line succeeded")
	}
	forge := "snigate_certs_forged_total 12\nsnigate_cert_forge_seconds_total 0.0036\n"
	v, err := parseMetrics(strings.NewReader(forge),
		"snigate_cert_forge_seconds_total", "snigate_certs_forged_total")
	if err != nil || v[0] != 0.0036 || v[1] != 12 {
		t.Errorf("parseMetrics of two names = %v, %v; want [0.0036 12]", v, err)
	}
}

func TestMedianAndNum(t *testing.T) {
	if m := median([]float64{3, 1, 2}); m != 2 {
		t.Errorf("median odd = %g", m)
	}
	if m := median([]float64{4, 1, 2, 3}); m != 2.5 {
		t.Errorf("median even = %g", m)
	}
	for v, want := range map[float64]string{0: "0", 0.0123: "0.012", 1.234: "1.23",
		12.34: "12.3", 1234.5: "1234", -0.5: "-0.50"} {
		if got := num(v); got != want {
			t.Errorf("num(%g) = %q, want %q", v, got, want)
		}
	}
}

func ptr(v float64) *float64 { return &v }

// TestWriteTable feeds the report two repetitions of made-up results and
// checks medians, ratios, n/a cells and verdicts.
func TestWriteTable(t *testing.T) {
	var results []result
	for rep, scale := range []float64{1, 1.2} {
		rep++
		results = append(results,
			result{Test: "splice1", System: "direct", Rep: rep, Bytes: gib, GiBps: 1 * scale},
			result{Test: "splice1", System: "snigate", Rep: rep, Bytes: gib, GiBps: 0.98 * scale,
				GwCPUSeconds: ptr(0.5)},
			result{Test: "splice1", System: "squid", Rep: rep, Bytes: gib, GiBps: 0.7 * scale,
				GwCPUSeconds: ptr(2)},
			result{Test: "bump8", System: "direct", Rep: rep, Conns: 1000, Rate: 100},
			result{Test: "bump8", System: "snigate", Rep: rep, Conns: 500, Rate: 50,
				GwCPUSeconds: ptr(1)},
			result{Test: "bump8", System: "squid", Rep: rep, Conns: 200, Rate: 20,
				GwCPUSeconds: ptr(1), Errors: 2, FirstError: "tls: boom"},
			result{Test: "newname", System: "snigate", Rep: rep, Names: 10,
				ColdP50ms: 2.5, WarmP50ms: 2},
			result{Test: "tunnels", System: "snigate", Rep: rep, Tunnels: 1000,
				Before: &procUsage{RSSKiB: 10000, FDs: 10, Goroutines: ptr(10)},
				After:  &procUsage{RSSKiB: 16000, FDs: 6010, Goroutines: ptr(2010)}},
		)
	}
	var b strings.Builder
	if err := writeTable(&b, results, metrics([]int{8})); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	row := func(name string) string {
		for line := range strings.Lines(out) {
			if strings.HasPrefix(line, name) {
				return strings.Join(strings.Fields(line[len(name):]), " ")
			}
		}
		t.Fatalf("no row %q in\n%s", name, out)
		return ""
	}

	for _, tt := range []struct{ row, want string }{
		{"spliced 1 stream, GiB/s",
			"1.10 1.08 (0.98x) 0.77 (0.70x) snigate >= 0.95x direct met (0.98x)"},
		{"spliced 8 streams, GiB/s total", "n/a n/a n/a snigate >= 0.95x direct not measured"},
		{"gateway CPU s per GiB, 1 stream", "n/a 0.50 2.00"},
		{"bumped new conn/s, c=8",
			"100 50.0 (0.50x) 20.0 (0.20x) snigate >= 3x squid NOT met (2.50x)"},
		{"gateway CPU ms per conn, c=8", "n/a 2.00 5.00 snigate <= 1.5 ms NOT met (2.00 ms)"},
		{"forging: new - warm p50, ms", "n/a 0.50 n/a snigate <= 0.3 ms NOT met (0.50 ms)"},
		{"RSS KiB per idle tunnel", "n/a 6.00 n/a snigate <= 8 KiB met (6.00 KiB)"},
		{"fds per idle tunnel", "n/a 6.00 n/a"},
		{"goroutines per idle tunnel", "n/a 2.00 n/a"},
		{"failed connections", "0 in 4 runs 0 in 8 runs 4 in 4 runs"},
	} {
		if got := row(tt.row); got != tt.want {
			t.Errorf("row %q = %q, want %q", tt.row, got, tt.want)
		}
	}
	if !strings.Contains(out, "squid/bump8 rep 1: 2 errors, first: tls: boom") {
		t.Errorf("table does not list the failed runs:\n%s", out)
	}
}
