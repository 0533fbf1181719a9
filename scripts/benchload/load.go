package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// gib is one GiB, the unit of the throughput numbers.
const gib = 1 << 30

// runDownload fetches --bytes from /bytes over --streams parallel
// connections (each gets an equal share) and reports the total rate.
func runDownload(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("download", flag.ContinueOnError)
	var t target
	var l labels
	t.register(fs, true)
	l.register(fs)
	total := fs.Int64("bytes", gib, "bytes to download in all")
	streams := fs.Int("streams", 1, "parallel connections")
	timeout := fs.Duration("timeout", 5*time.Minute, "give up after this long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := t.check(true); err != nil {
		return err
	}
	if *streams < 1 || *streams > 256 || *total < int64(*streams) {
		return fmt.Errorf("--streams %d must be 1-256 and at most --bytes %d", *streams, *total)
	}
	cfg, err := clientConfig(t.ca, t.sni)
	if err != nil {
		return err
	}

	res := newResult(l)
	res.Streams = *streams
	cpu0, err := gwCPU(l.gwPID)
	if err != nil {
		return err
	}
	start := time.Now()
	var got atomic.Int64
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := range *streams {
		share := *total / int64(*streams)
		if i == 0 {
			share += *total % int64(*streams)
		}
		wg.Go(func() {
			sink := make([]byte, 256<<10)
			n, err := get(ctx, t.addr, cfg, fmt.Sprintf("/bytes?n=%d", share), *timeout, sink)
			got.Add(n)
			if err != nil {
				mu.Lock()
				res.fail(err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	res.Seconds = time.Since(start).Seconds()
	if res.GwCPUSeconds, err = cpuSince(l.gwPID, cpu0); err != nil {
		return err
	}
	res.Bytes = got.Load()
	res.GiBps = float64(res.Bytes) / gib / res.Seconds
	return res.print()
}

// runConns opens new connections back to back from --concurrency workers
// for --duration: each a full handshake, one small GET with Connection:
// close, and a close. Every worker first makes --warmup connections that
// are not counted, so caches in the gateway are warm when timing starts.
func runConns(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("conns", flag.ContinueOnError)
	var t target
	var l labels
	t.register(fs, true)
	l.register(fs)
	concurrency := fs.Int("concurrency", 8, "parallel workers")
	duration := fs.Duration("duration", 10*time.Second, "how long to measure")
	warmup := fs.Int("warmup", 3, "uncounted connections per worker before timing")
	limit := fs.Int64("max", 1_000_000, "stop after this many connections")
	path := fs.String("path", "/", "path to GET")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := t.check(true); err != nil {
		return err
	}
	if *concurrency < 1 || *concurrency > 1024 || *duration <= 0 || *duration > 10*time.Minute {
		return fmt.Errorf("--concurrency %d must be 1-1024 and --duration %s in (0, 10m]",
			*concurrency, *duration)
	}
	cfg, err := clientConfig(t.ca, t.sni)
	if err != nil {
		return err
	}
	const perConn = 10 * time.Second

	// Warm up, all workers at once, then time from a common start.
	res := newResult(l)
	res.Concurrency = *concurrency
	var mu sync.Mutex
	fail := func(err error) {
		mu.Lock()
		res.fail(err)
		mu.Unlock()
	}
	var wg sync.WaitGroup
	for range *concurrency {
		wg.Go(func() {
			sink := make([]byte, 16<<10)
			for range *warmup {
				if _, err := get(ctx, t.addr, cfg, *path, perConn, sink); err != nil {
					fail(fmt.Errorf("warmup: %w", err))
				}
			}
		})
	}
	wg.Wait()
	if res.Errors > 0 {
		fmt.Fprintf(os.Stderr, "benchload conns: %d warmup failures, first: %s\n",
			res.Errors, res.FirstError)
		res.Errors, res.FirstError = 0, ""
	}

	cpu0, err := gwCPU(l.gwPID)
	if err != nil {
		return err
	}
	start := time.Now()
	end := start.Add(*duration)
	var count atomic.Int64
	lat := make([][]time.Duration, *concurrency)
	for w := range *concurrency {
		wg.Go(func() {
			sink := make([]byte, 16<<10)
			for time.Now().Before(end) && ctx.Err() == nil && count.Add(1) <= *limit {
				t0 := time.Now()
				if _, err := get(ctx, t.addr, cfg, *path, perConn, sink); err != nil {
					fail(err)
					continue
				}
				lat[w] = append(lat[w], time.Since(t0))
			}
		})
	}
	wg.Wait()
	res.Seconds = time.Since(start).Seconds()
	if res.GwCPUSeconds, err = cpuSince(l.gwPID, cpu0); err != nil {
		return err
	}

	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	all = sortedCopy(all)
	res.Conns = int64(len(all))
	res.Rate = float64(res.Conns) / res.Seconds
	res.P50ms, res.P99ms = percentile(all, 0.50), percentile(all, 0.99)
	return res.print()
}

// handshakeOnly completes a TLS handshake with addr for name and hangs up.
// It only warms the server, so it verifies nothing.
func handshakeOnly(ctx context.Context, addr, name string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	d := tls.Dialer{Config: &tls.Config{ServerName: name, InsecureSkipVerify: true}}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	return conn.Close()
}

// runNewNames measures the first connection to names the gateway has never
// seen (so it must forge a certificate for each) against connections to one
// name it has seen, alternating one of each, one at a time. The new names
// are PREFIX-n0001.DOMAIN, PREFIX-n0002.DOMAIN, ...
func runNewNames(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("newnames", flag.ContinueOnError)
	var t target
	var l labels
	t.register(fs, false)
	l.register(fs)
	prefix := fs.String("prefix", "", "first part of every new name's first label")
	domain := fs.String("domain", "bench.example.test", "parent `domain` of the new names")
	warmName := fs.String("warm", "", "the warm `name` (default warm.DOMAIN)")
	count := fs.Int("count", 200, "new names to try (and as many warm connections)")
	prime := fs.String("prime", "",
		"server `ADDR:PORT` the gateway does not intercept, shown every new name first, so "+
			"that a server making a certificate per name has made it before the timed connection")
	metricsURL := fs.String("metrics", "", "gateway Prometheus `URL` to read forging counters from")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := t.check(false); err != nil {
		return err
	}
	if *count < 1 || *count > 9999 {
		return fmt.Errorf("--count %d not in 1-9999", *count)
	}
	if *warmName == "" {
		*warmName = "warm." + *domain
	}
	if err := errors.Join(checkName(*prefix+"n0001."+*domain), checkName(*warmName)); err != nil {
		return err
	}
	base, err := clientConfig(t.ca, "")
	if err != nil {
		return err
	}
	warm := withName(base, *warmName)
	const perConn = 10 * time.Second
	sink := make([]byte, 16<<10)

	res := newResult(l)
	res.Names = *count
	for range 3 {
		if _, err := get(ctx, t.addr, warm, "/", perConn, sink); err != nil {
			return fmt.Errorf("warm up %s: %w", *warmName, err)
		}
	}
	if *prime != "" {
		for i := 1; i <= *count; i++ {
			name := fmt.Sprintf("%sn%04d.%s", *prefix, i, *domain)
			if err := handshakeOnly(ctx, *prime, name); err != nil {
				return fmt.Errorf("prime %s at %s: %w", name, *prime, err)
			}
		}
	}
	forgeMetrics := []string{"snigate_cert_forge_seconds_total", "snigate_certs_forged_total"}
	var forge0 []float64
	if *metricsURL != "" {
		if forge0, err = scrape(ctx, *metricsURL, forgeMetrics...); err != nil {
			return err
		}
	}
	cpu0, err := gwCPU(l.gwPID)
	if err != nil {
		return err
	}
	start := time.Now()
	var cold, hot []time.Duration
	for i := 1; i <= *count && ctx.Err() == nil; i++ {
		name := fmt.Sprintf("%sn%04d.%s", *prefix, i, *domain)
		for _, c := range []struct {
			cfg *tls.Config
			out *[]time.Duration
		}{{withName(base, name), &cold}, {warm, &hot}} {
			t0 := time.Now()
			if _, err := get(ctx, t.addr, c.cfg, "/", perConn, sink); err != nil {
				res.fail(err)
				continue
			}
			*c.out = append(*c.out, time.Since(t0))
		}
	}
	res.Seconds = time.Since(start).Seconds()
	if res.GwCPUSeconds, err = cpuSince(l.gwPID, cpu0); err != nil {
		return err
	}
	if *metricsURL != "" {
		forge1, err := scrape(ctx, *metricsURL, forgeMetrics...)
		if err != nil {
			return err
		}
		if res.Forged = int64(forge1[1] - forge0[1]); res.Forged > 0 {
			res.ForgeMs = (forge1[0] - forge0[0]) * 1000 / float64(res.Forged)
		}
	}
	cold, hot = sortedCopy(cold), sortedCopy(hot)
	res.ColdP50ms, res.ColdP99ms = percentile(cold, 0.50), percentile(cold, 0.99)
	res.WarmP50ms, res.WarmP99ms = percentile(hot, 0.50), percentile(hot, 0.99)
	return res.print()
}
