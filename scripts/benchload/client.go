package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"
)

// target is where a measuring command connects and what it trusts.
type target struct {
	addr string // IP:PORT dialled directly
	sni  string // server name, Host header and name verified
	ca   string // PEM file of the roots to trust
}

func (t *target) register(fs *flag.FlagSet, needSNI bool) {
	fs.StringVar(&t.addr, "addr", "", "server `IP:PORT` to dial")
	if needSNI {
		fs.StringVar(&t.sni, "sni", "", "server `name` to send and verify")
	}
	fs.StringVar(&t.ca, "ca", "", "PEM `file` of the roots to trust")
}

func (t *target) check(needSNI bool) error {
	if t.addr == "" || t.ca == "" || (needSNI && t.sni == "") {
		return errors.New("--addr, --ca and --sni are required")
	}
	if _, _, err := net.SplitHostPort(t.addr); err != nil {
		return fmt.Errorf("--addr %q is not IP:PORT", t.addr)
	}
	return nil
}

// labels identify a result in the collected JSON lines.
type labels struct {
	system string
	test   string
	rep    int
	gwPID  int
}

func (l *labels) register(fs *flag.FlagSet) {
	fs.StringVar(&l.system, "system", "", "system under test, copied into the result")
	fs.StringVar(&l.test, "test", "", "measurement name, copied into the result")
	fs.IntVar(&l.rep, "rep", 0, "repetition number, copied into the result")
	fs.IntVar(&l.gwPID, "gw-pid", 0, "`pid` of the gateway process to watch (0: none)")
}

// result is one measurement, printed as one JSON line. Fields a command
// does not measure are left out.
type result struct {
	Test   string `json:"test"`
	System string `json:"system"`
	Rep    int    `json:"rep"`

	Seconds float64 `json:"seconds"`
	Errors  int64   `json:"errors"`
	// FirstError is the text of the first failure, for the log.
	FirstError string `json:"first_error,omitempty"`

	// download
	Streams int     `json:"streams,omitempty"`
	Bytes   int64   `json:"bytes,omitempty"`
	GiBps   float64 `json:"gibps,omitempty"`

	// conns
	Concurrency int     `json:"concurrency,omitempty"`
	Conns       int64   `json:"conns,omitempty"`
	Rate        float64 `json:"rate,omitempty"`
	P50ms       float64 `json:"p50_ms,omitempty"`
	P99ms       float64 `json:"p99_ms,omitempty"`

	// newnames: connections to never-seen names and to one warm name
	Names     int     `json:"names,omitempty"`
	ColdP50ms float64 `json:"cold_p50_ms,omitempty"`
	ColdP99ms float64 `json:"cold_p99_ms,omitempty"`
	WarmP50ms float64 `json:"warm_p50_ms,omitempty"`
	WarmP99ms float64 `json:"warm_p99_ms,omitempty"`
	// Forged and ForgeMs are the certificates the gateway forged during
	// the run and their mean forging time, from its metrics (snigate only).
	Forged  int64   `json:"forged,omitempty"`
	ForgeMs float64 `json:"forge_ms,omitempty"`

	// tunnels
	Tunnels int        `json:"tunnels,omitempty"`
	Before  *procUsage `json:"gw_before,omitempty"`
	After   *procUsage `json:"gw_after,omitempty"`

	// GwCPUSeconds is the gateway's user+system CPU time during the
	// measured part of the run; absent without --gw-pid.
	GwCPUSeconds *float64 `json:"gw_cpu_s,omitempty"`
}

func newResult(l labels) *result {
	return &result{Test: l.test, System: l.system, Rep: l.rep}
}

// fail counts an error and keeps the first one's text.
func (r *result) fail(err error) {
	if r.Errors == 0 {
		r.FirstError = err.Error()
	}
	r.Errors++
}

func (r *result) print() error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	_, err = fmt.Printf("%s\n", b)
	return err
}

// clientConfig is a client TLS configuration that trusts only the roots in
// caFile and offers HTTP/1.1 only. It has no session cache, so every
// connection makes a full handshake.
func clientConfig(caFile, sni string) (*tls.Config, error) {
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no PEM certificate", caFile)
	}
	return &tls.Config{RootCAs: roots, ServerName: sni, NextProtos: []string{"http/1.1"}}, nil
}

// withName returns a copy of cfg for another server name.
func withName(cfg *tls.Config, sni string) *tls.Config {
	c := cfg.Clone()
	c.ServerName = sni
	return c
}

// dialTCP opens every connection the commands make; tests replace it.
var dialTCP = func(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

// get makes one connection to addr: TCP, a full TLS handshake verified
// against cfg, one "GET path" with Connection: close, and reads the whole
// response body into sink. It returns the body length. The whole exchange
// must finish within timeout.
func get(ctx context.Context, addr string, cfg *tls.Config, path string,
	timeout time.Duration, sink []byte) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	raw, err := dialTCP(ctx, addr)
	if err != nil {
		return 0, err
	}
	defer raw.Close()
	if deadline, ok := ctx.Deadline(); ok {
		raw.SetDeadline(deadline)
	}
	stop := context.AfterFunc(ctx, func() { raw.SetDeadline(time.Now()) })
	defer stop()

	conn := tls.Client(raw, cfg)
	if err := conn.HandshakeContext(ctx); err != nil {
		return 0, fmt.Errorf("tls handshake for %s: %w", cfg.ServerName, err)
	}
	req := "GET " + path + " HTTP/1.1\r\nHost: " + cfg.ServerName +
		"\r\nUser-Agent: snigate-benchload\r\nConnection: close\r\n\r\n"
	if _, err := io.WriteString(conn, req); err != nil {
		return 0, fmt.Errorf("write request: %w", err)
	}

	resp, err := http.ReadResponse(bufio.NewReaderSize(conn, 64<<10), nil)
	if err != nil {
		return 0, fmt.Errorf("read response: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %s: status %s", path, resp.Status)
	}
	n, err := drain(resp.Body, sink)
	if err != nil {
		return n, fmt.Errorf("read body after %d bytes: %w", n, err)
	}
	if resp.ContentLength >= 0 && n != resp.ContentLength {
		return n, fmt.Errorf("body has %d bytes, Content-Length %d", n, resp.ContentLength)
	}
	// The server closes after the response (Connection: close). Reading up
	// to its close_notify and FIN ends the connection cleanly; closing with
	// those unread would answer them with a reset.
	if _, err := drain(conn, sink); err != nil {
		return n, fmt.Errorf("wait for the server to close: %w", err)
	}
	return n, nil
}

// drain reads r to the end through buf and returns how much it read.
func drain(r io.Reader, buf []byte) (int64, error) {
	var total int64
	for {
		n, err := r.Read(buf)
		total += int64(n)
		if errors.Is(err, io.EOF) {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// percentile returns the q-quantile (0 < q <= 1) of sorted durations in
// milliseconds, by the nearest-rank method, or 0 for none.
func percentile(sorted []time.Duration, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	i = min(max(i, 0), len(sorted)-1)
	return float64(sorted[i]) / float64(time.Millisecond)
}

func sortedCopy(d []time.Duration) []time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s
}

// runProbe waits until one request through the gateway succeeds with the
// given trust, which shows that the expected system is in the path: a
// bumped name verifies only against the gateway's CA, a spliced or
// forwarded one only against the lab root.
func runProbe(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("probe", flag.ContinueOnError)
	var t target
	t.register(fs, true)
	wait := fs.Duration("wait", 15*time.Second, "give up after this long")
	path := fs.String("path", "/", "path to GET")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := t.check(true); err != nil {
		return err
	}
	cfg, err := clientConfig(t.ca, t.sni)
	if err != nil {
		return err
	}

	deadline := time.Now().Add(*wait)
	sink := make([]byte, 16<<10)
	for {
		_, err := get(ctx, t.addr, cfg, *path, 2*time.Second, sink)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("%s (%s) with roots %s: %w", t.addr, t.sni, t.ca, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// checkName rejects names that would not fit a DNS label scheme, so a typo
// in the script fails early instead of as a handshake error.
func checkName(name string) error {
	if name == "" || len(name) > 253 || strings.ContainsAny(name, " /:") {
		return fmt.Errorf("%q is not a server name", name)
	}
	return nil
}
