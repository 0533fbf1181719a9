package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strings"
)

// The systems, in table order; ratios are to the first.
var systems = []string{"direct", "snigate", "squid"}

// metric is one table row: a value taken from every result of one test.
type metric struct {
	name string
	test string
	// value returns the row's number for one result, false if it has none
	// (no gateway process for plain forwarding, say).
	value func(r *result) (float64, bool)
	// ratio prints each value's ratio to direct next to it.
	ratio bool
	goal  *goal
}

// goal is one of the targets snigate is measured against.
type goal struct {
	text string
	// check returns whether the medians meet it and a figure to show.
	check func(med map[string]float64) (met bool, figure string, ok bool)
}

// atLeastTimes is "snigate >= k x other".
func atLeastTimes(k float64, other string) *goal {
	return &goal{
		text: fmt.Sprintf("snigate >= %gx %s", k, other),
		check: func(med map[string]float64) (bool, string, bool) {
			s, ok1 := med["snigate"]
			o, ok2 := med[other]
			if !ok1 || !ok2 || o == 0 {
				return false, "", false
			}
			return s >= k*o, fmt.Sprintf("%.2fx", s/o), true
		},
	}
}

// atMost is "snigate <= limit unit".
func atMost(limit float64, unit string) *goal {
	return &goal{
		text: fmt.Sprintf("snigate <= %g %s", limit, unit),
		check: func(med map[string]float64) (bool, string, bool) {
			s, ok := med["snigate"]
			if !ok {
				return false, "", false
			}
			return s <= limit, num(s) + " " + unit, true
		},
	}
}

// metrics lists the table's rows.
func metrics(concurrencies []int) []metric {
	gibps := func(r *result) (float64, bool) { return r.GiBps, r.Bytes > 0 }
	cpuPerGiB := func(r *result) (float64, bool) {
		if r.GwCPUSeconds == nil || r.Bytes == 0 {
			return 0, false
		}
		return *r.GwCPUSeconds / (float64(r.Bytes) / gib), true
	}
	out := []metric{
		{name: "spliced 1 stream, GiB/s", test: "splice1", value: gibps, ratio: true,
			goal: atLeastTimes(0.95, "direct")},
		{name: "spliced 8 streams, GiB/s total", test: "splice8", value: gibps, ratio: true,
			goal: atLeastTimes(0.95, "direct")},
		{name: "gateway CPU s per GiB, 1 stream", test: "splice1", value: cpuPerGiB},
		{name: "gateway CPU s per GiB, 8 streams", test: "splice8", value: cpuPerGiB},
	}
	for _, c := range concurrencies {
		test := fmt.Sprintf("bump%d", c)
		out = append(out,
			metric{name: fmt.Sprintf("bumped new conn/s, c=%d", c), test: test,
				value: func(r *result) (float64, bool) { return r.Rate, r.Conns > 0 },
				ratio: true, goal: atLeastTimes(3, "squid")},
			metric{name: fmt.Sprintf("gateway CPU ms per conn, c=%d", c), test: test,
				value: func(r *result) (float64, bool) {
					if r.GwCPUSeconds == nil || r.Conns == 0 {
						return 0, false
					}
					return *r.GwCPUSeconds * 1000 / float64(r.Conns), true
				}, goal: atMost(1.5, "ms")},
			metric{name: fmt.Sprintf("bumped conn p50 ms, c=%d", c), test: test,
				value: func(r *result) (float64, bool) { return r.P50ms, r.Conns > 0 }},
			metric{name: fmt.Sprintf("bumped conn p99 ms, c=%d", c), test: test,
				value: func(r *result) (float64, bool) { return r.P99ms, r.Conns > 0 }},
			metric{name: fmt.Sprintf("spliced new conn/s, c=%d", c),
				test:  fmt.Sprintf("spliceconn%d", c),
				value: func(r *result) (float64, bool) { return r.Rate, r.Conns > 0 },
				ratio: true},
		)
	}
	names := func(f func(r *result) float64) func(r *result) (float64, bool) {
		return func(r *result) (float64, bool) { return f(r), r.Names > 0 && r.Errors == 0 }
	}
	perTunnel := func(f func(u *procUsage) float64) func(r *result) (float64, bool) {
		return func(r *result) (float64, bool) {
			if r.Before == nil || r.After == nil || r.Tunnels == 0 {
				return 0, false
			}
			return (f(r.After) - f(r.Before)) / float64(r.Tunnels), true
		}
	}
	out = append(out,
		metric{name: "new name, first conn p50 ms", test: "newname",
			value: names(func(r *result) float64 { return r.ColdP50ms })},
		metric{name: "new name, first conn p99 ms", test: "newname",
			value: names(func(r *result) float64 { return r.ColdP99ms })},
		metric{name: "warm name, conn p50 ms", test: "newname",
			value: names(func(r *result) float64 { return r.WarmP50ms })},
		metric{name: "warm name, conn p99 ms", test: "newname",
			value: names(func(r *result) float64 { return r.WarmP99ms })},
		metric{name: "forging: new - warm p50, ms", test: "newname",
			value: names(func(r *result) float64 { return r.ColdP50ms - r.WarmP50ms }),
			goal:  atMost(0.3, "ms")},
		metric{name: "forging: gateway ms per certificate", test: "newname",
			value: func(r *result) (float64, bool) { return r.ForgeMs, r.Forged > 0 },
			goal:  atMost(0.3, "ms")},
		metric{name: "idle spliced tunnels held", test: "tunnels",
			value: func(r *result) (float64, bool) { return float64(r.Tunnels), true }},
		metric{name: "RSS KiB per idle tunnel", test: "tunnels",
			value: perTunnel(func(u *procUsage) float64 { return float64(u.RSSKiB) }),
			goal:  atMost(8, "KiB")},
		metric{name: "live heap+stacks KiB per idle tunnel", test: "tunnels",
			value: func(r *result) (float64, bool) {
				if r.Before == nil || r.After == nil || r.Tunnels == 0 ||
					r.Before.LiveKiB == nil || r.After.LiveKiB == nil {
					return 0, false
				}
				return (*r.After.LiveKiB - *r.Before.LiveKiB) / float64(r.Tunnels), true
			}},
		metric{name: "fds per idle tunnel", test: "tunnels",
			value: perTunnel(func(u *procUsage) float64 { return float64(u.FDs) })},
		metric{name: "goroutines per idle tunnel", test: "tunnels",
			value: func(r *result) (float64, bool) {
				if r.Before == nil || r.After == nil || r.Tunnels == 0 ||
					r.Before.Goroutines == nil || r.After.Goroutines == nil {
					return 0, false
				}
				return (*r.After.Goroutines - *r.Before.Goroutines) / float64(r.Tunnels), true
			}},
	)
	return out
}

func runReport(args []string) error {
	fs := flag.NewFlagSet("report", flag.ContinueOnError)
	file := fs.String("results", "", "`file` of JSON result lines")
	conc := fs.String("concurrency", "8,32", "comma-separated concurrencies of the bump tests")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *file == "" {
		return errors.New("--results is required")
	}
	var concurrencies []int
	for _, s := range strings.Split(*conc, ",") {
		var c int
		if _, err := fmt.Sscanf(strings.TrimSpace(s), "%d", &c); err != nil || c < 1 {
			return fmt.Errorf("--concurrency: %q is not a positive number", s)
		}
		concurrencies = append(concurrencies, c)
	}
	f, err := os.Open(*file)
	if err != nil {
		return err
	}
	defer f.Close()
	results, err := readResults(f)
	if err != nil {
		return fmt.Errorf("%s: %w", *file, err)
	}
	return writeTable(os.Stdout, results, metrics(concurrencies))
}

func readResults(r io.Reader) ([]result, error) {
	var out []result
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for line := 1; sc.Scan(); line++ {
		if strings.TrimSpace(sc.Text()) == "" {
			continue
		}
		var res result
		if err := json.Unmarshal(sc.Bytes(), &res); err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		out = append(out, res)
	}
	return out, sc.Err()
}

// writeTable prints one row per metric with each system's median over the
// repetitions, then the errors per system.
func writeTable(w io.Writer, results []result, rows []metric) error {
	const layout = "%-34s %14s %16s %16s  %-24s %s\n"
	var b strings.Builder
	fmt.Fprintf(&b, layout, "measurement (median)", "direct", "snigate", "squid",
		"target", "snigate")
	for _, m := range rows {
		med := map[string]float64{}
		for _, sys := range systems {
			var vals []float64
			for i := range results {
				r := &results[i]
				if r.Test != m.test || r.System != sys {
					continue
				}
				if v, ok := m.value(r); ok {
					vals = append(vals, v)
				}
			}
			if len(vals) > 0 {
				med[sys] = median(vals)
			}
		}
		cells := make([]string, len(systems))
		for i, sys := range systems {
			v, ok := med[sys]
			switch {
			case !ok:
				cells[i] = "n/a"
			case m.ratio && sys != "direct" && med["direct"] > 0:
				cells[i] = fmt.Sprintf("%s (%.2fx)", num(v), v/med["direct"])
			default:
				cells[i] = num(v)
			}
		}
		goalText, verdict := "", ""
		if m.goal != nil {
			goalText = m.goal.text
			met, fig, ok := m.goal.check(med)
			switch {
			case !ok:
				verdict = "not measured"
			case met:
				verdict = "met (" + fig + ")"
			default:
				verdict = "NOT met (" + fig + ")"
			}
		}
		fmt.Fprintf(&b, layout, m.name, cells[0], cells[1], cells[2], goalText, verdict)
	}

	errs := make([]string, len(systems))
	for i, sys := range systems {
		var n, runs int64
		for _, r := range results {
			if r.System == sys {
				n += r.Errors
				runs++
			}
		}
		errs[i] = fmt.Sprintf("%d in %d runs", n, runs)
	}
	fmt.Fprintf(&b, layout, "failed connections", errs[0], errs[1], errs[2], "", "")
	for _, r := range results {
		if r.FirstError != "" {
			fmt.Fprintf(&b, "  %s/%s rep %d: %d errors, first: %.160s\n",
				r.System, r.Test, r.Rep, r.Errors, r.FirstError)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// num prints a value with about three significant digits.
func num(v float64) string {
	a := math.Abs(v)
	switch {
	case a == 0:
		return "0"
	case a < 0.1:
		return fmt.Sprintf("%.3f", v)
	case a < 10:
		return fmt.Sprintf("%.2f", v)
	case a < 100:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.0f", v)
	}
}
