package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"net/netip"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// TestBenchNames checks the wildcard identity the benchmark uses for names a
// gateway has never seen: one label below bench.example.test, by SNI, on
// www.example.test's address.
func TestBenchNames(t *testing.T) {
	s := mustServer(t, context.Background())
	www := netip.MustParseAddr("198.19.1.3")

	tests := []struct {
		name string
		sni  string
		want string
	}{
		{name: "new name", sni: "n0001.bench.example.test", want: "bench.example.test"},
		{name: "tagged name", sni: "r2-squid-n0199.bench.example.test", want: "bench.example.test"},
		{name: "two labels fall back", sni: "a.b.bench.example.test", want: "www.example.test"},
		{name: "apex falls back", sni: "bench.example.test", want: "www.example.test"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if h := s.pick(tt.sni, www); h == nil || h.name != tt.want {
				t.Errorf("pick(%q) = %v, want %s", tt.sni, h, tt.want)
			}
		})
	}

	leaf := mustLeaf(t, s.dir, "bench.example.test")
	roots := mustPool(t, filepath.Join(s.dir, labRootName+".crt"))
	if _, err := leaf.Verify(x509.VerifyOptions{
		DNSName: "n0042.bench.example.test", Roots: roots,
	}); err != nil {
		t.Errorf("verify bench leaf: %v", err)
	}

	// Each name gets a leaf of its own, the same one each time.
	bench := s.pick("n0042.bench.example.test", www)
	var first *tls.Certificate
	for range 2 {
		cert, err := bench.certFor("N0042.bench.example.test.")
		if err != nil {
			t.Fatal(err)
		}
		if first != nil && cert != first {
			t.Error("a second handshake for the name got a new leaf")
		}
		first = cert
	}
	own, err := x509.ParseCertificate(first.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if len(own.DNSNames) != 1 || own.DNSNames[0] != "n0042.bench.example.test" {
		t.Errorf("per-name leaf names %v, want only n0042.bench.example.test", own.DNSNames)
	}
	if _, err := own.Verify(x509.VerifyOptions{
		DNSName: "n0042.bench.example.test", Roots: roots,
	}); err != nil {
		t.Errorf("verify per-name leaf: %v", err)
	}
	if other, _ := bench.certFor("n0043.bench.example.test"); other == first {
		t.Error("two names share a per-name leaf")
	}
	if apex, _ := bench.certFor("a.b.bench.example.test"); apex != bench.cert {
		t.Error("a name the wildcard does not cover got a per-name leaf")
	}
}

func TestBytes(t *testing.T) {
	stop, cancel := context.WithCancel(context.Background())
	s := mustServer(t, stop)
	srv := s.newHTTPServer()
	ln := newPairListener()
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { cancel(); srv.Close() })

	roots := mustPool(t, filepath.Join(s.dir, labRootName+".crt"))
	client := &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			DialContext:     ln.dial,
			TLSClientConfig: &tls.Config{RootCAs: roots, NextProtos: []string{"http/1.1"}},
		},
	}

	tests := []struct {
		name       string
		query      string
		wantStatus int
		wantLen    int64
	}{
		{name: "zero", query: "n=0", wantStatus: http.StatusOK},
		{name: "under a chunk", query: "n=1000", wantStatus: http.StatusOK, wantLen: 1000},
		{
			name: "several chunks", query: "n=" + strconv.Itoa(3*len(bytesChunk)+5),
			wantStatus: http.StatusOK, wantLen: int64(3*len(bytesChunk) + 5),
		},
		{name: "missing", query: "", wantStatus: http.StatusBadRequest},
		{name: "negative", query: "n=-1", wantStatus: http.StatusBadRequest},
		{name: "not a number", query: "n=lots", wantStatus: http.StatusBadRequest},
		{name: "too large", query: "n=1099511627777", wantStatus: http.StatusBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := client.Get("https://tunnel.cloudproxy.app/bytes?" + tt.query)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("status %d, want %d", resp.StatusCode, tt.wantStatus)
			}
			if tt.wantStatus != http.StatusOK {
				return
			}
			n, err := io.Copy(io.Discard, resp.Body)
			if err != nil || n != tt.wantLen || resp.ContentLength != tt.wantLen {
				t.Errorf("read %d bytes (Content-Length %d, err %v), want %d",
					n, resp.ContentLength, err, tt.wantLen)
			}
		})
	}
}
