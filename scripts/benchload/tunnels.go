package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// runTunnels opens --count WebSocket tunnels (one echo each, then idle),
// holds them, and reports what the gateway used before and while they were
// open. Closing them ends the run.
func runTunnels(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("tunnels", flag.ContinueOnError)
	var t target
	var l labels
	t.register(fs, true)
	l.register(fs)
	count := fs.Int("count", 2000, "tunnels to hold open")
	parallel := fs.Int("parallel", 32, "tunnels being opened at once")
	settle := fs.Duration("settle", 2*time.Second,
		"wait this long with all tunnels open before measuring")
	metrics := fs.String("metrics", "", "gateway Prometheus `URL` to read go_goroutines from")
	gcURL := fs.String("gc-url", "", "a gateway `URL` whose GET runs a garbage collection "+
		"(pprof's /debug/pprof/heap?gc=1); with --metrics, live memory is read after it")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := t.check(true); err != nil {
		return err
	}
	if *count < 1 || *count > 100_000 || *parallel < 1 || *parallel > 1024 {
		return fmt.Errorf("--count %d must be 1-100000 and --parallel %d 1-1024",
			*count, *parallel)
	}
	cfg, err := clientConfig(t.ca, t.sni)
	if err != nil {
		return err
	}
	ws := &wsDialer{addr: t.addr, url: "wss://" + t.sni + "/ws", tr: &http.Transport{
		TLSClientConfig:     cfg,
		TLSHandshakeTimeout: 15 * time.Second,
		DisableKeepAlives:   true,
	}}
	ws.tr.DialContext = ws.dial

	// A few tunnels first, so whatever the gateway sets up lazily exists
	// before the baseline.
	warm, failed := ws.openAll(ctx, 8, 8)
	if failed > 0 {
		return fmt.Errorf("warmup: %d of 8 tunnels failed: %v", failed, ws.firstErr)
	}
	closeAll(warm)
	time.Sleep(time.Second)

	res := newResult(l)
	if res.Before, err = gatewayUsage(ctx, l.gwPID, *metrics, *gcURL); err != nil {
		return err
	}
	start := time.Now()
	conns, failed := ws.openAll(ctx, *count, *parallel)
	res.Tunnels = len(conns)
	res.Errors = int64(failed)
	if ws.firstErr != nil {
		res.FirstError = ws.firstErr.Error()
	}
	res.Seconds = time.Since(start).Seconds()

	select {
	case <-time.After(*settle):
	case <-ctx.Done():
	}
	res.After, err = gatewayUsage(ctx, l.gwPID, *metrics, *gcURL)
	closeAll(conns)
	if err != nil {
		return err
	}
	return res.print()
}

// wsDialer opens WebSocket tunnels to the lab's echo endpoint at a fixed
// address.
type wsDialer struct {
	addr string
	url  string
	tr   *http.Transport

	mu       sync.Mutex
	firstErr error
}

func (w *wsDialer) dial(ctx context.Context, _, _ string) (net.Conn, error) {
	return dialTCP(ctx, w.addr)
}

// open makes one tunnel and checks that a message comes back.
func (w *wsDialer) open(ctx context.Context) (*websocket.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, w.url, &websocket.DialOptions{
		HTTPClient: &http.Client{Transport: w.tr},
	})
	if err != nil {
		return nil, err
	}
	if err := c.Write(ctx, websocket.MessageBinary, []byte("ping")); err != nil {
		c.CloseNow()
		return nil, fmt.Errorf("write: %w", err)
	}
	if _, msg, err := c.Read(ctx); err != nil || string(msg) != "ping" {
		c.CloseNow()
		return nil, fmt.Errorf("echo: got %q, %v", msg, err)
	}
	return c, nil
}

// openAll opens n tunnels, parallel at a time, and returns those that
// opened and how many failed.
func (w *wsDialer) openAll(ctx context.Context, n, parallel int) ([]*websocket.Conn, int) {
	var mu sync.Mutex
	var conns []*websocket.Conn
	failed := 0
	next := make(chan struct{})
	var wg sync.WaitGroup
	for range min(parallel, n) {
		wg.Go(func() {
			for range next {
				c, err := w.open(ctx)
				mu.Lock()
				if err != nil {
					failed++
					if w.firstErr == nil {
						w.firstErr = err
					}
				} else {
					conns = append(conns, c)
				}
				mu.Unlock()
			}
		})
	}
	for range n {
		if ctx.Err() != nil {
			break
		}
		next <- struct{}{}
	}
	close(next)
	wg.Wait()
	return conns, failed
}

func closeAll(conns []*websocket.Conn) {
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Go(func() { c.CloseNow() })
	}
	wg.Wait()
}

// gatewayUsage reads the gateway tree's usage and, with a metrics URL, its
// goroutine count; with a GC URL too, it then has the gateway collect its
// garbage and reads its live memory. RSS is read before the collection,
// as the gateway has it. Without a pid there is nothing to read.
func gatewayUsage(ctx context.Context, pid int, metricsURL, gcURL string) (*procUsage, error) {
	if pid == 0 {
		return nil, nil
	}
	u, err := treeUsage(pid)
	if err != nil {
		return nil, err
	}
	if metricsURL == "" {
		return &u, nil
	}
	v, err := scrape(ctx, metricsURL, "go_goroutines")
	if err != nil {
		return nil, err
	}
	u.Goroutines = &v[0]
	if gcURL == "" {
		return &u, nil
	}
	if err := get200(ctx, gcURL); err != nil {
		return nil, fmt.Errorf("collect garbage: %w", err)
	}
	v, err = scrape(ctx, metricsURL, "go_memstats_heap_inuse_bytes", "go_memstats_stack_inuse_bytes")
	if err != nil {
		return nil, err
	}
	live := (v[0] + v[1]) / 1024
	u.LiveKiB = &live
	return &u, nil
}

// get200 fetches url and discards the body; anything but 200 OK fails.
func get200(ctx context.Context, url string) error {
	_, err := fetch(ctx, url, 30*time.Second)
	return err
}

// scrape reads the named unlabelled samples from the Prometheus text
// exposition at url, in the order named.
func scrape(ctx context.Context, url string, names ...string) ([]float64, error) {
	body, err := fetch(ctx, url, 5*time.Second)
	if err != nil {
		return make([]float64, len(names)), fmt.Errorf("scrape metrics: %w", err)
	}
	return parseMetrics(bytes.NewReader(body), names...)
}

// fetch GETs url within timeout and returns the body of a 200 OK. It uses
// a transport of its own: the default one would keep a connection to the
// gateway open, which the gateway would count.
func fetch(ctx context.Context, url string, timeout time.Duration) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return body, nil
}

// parseMetrics returns the value of each named sample in r. It fails when
// one is missing.
func parseMetrics(r io.Reader, names ...string) ([]float64, error) {
	out := make([]float64, len(names))
	found := make([]bool, len(names))
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		for i, want := range names {
			if name == want {
				v, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
				if err != nil {
					return out, fmt.Errorf("metric %s: %w", name, err)
				}
				out[i], found[i] = v, true
			}
		}
	}
	if err := sc.Err(); err != nil {
		return out, err
	}
	for i, ok := range found {
		if !ok {
			return out, fmt.Errorf("metrics have no %s line", names[i])
		}
	}
	return out, nil
}
