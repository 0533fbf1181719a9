package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
)

func TestPick(t *testing.T) {
	s := mustServer(t, context.Background())

	tests := []struct {
		name  string
		sni   string
		local string
		want  string // "" means no host
	}{
		{name: "sni exact", sni: "www.example.test", local: "198.19.1.2", want: "www.example.test"},
		{name: "sni case and dot", sni: "Example.TEST.", want: "www.example.test"},
		{name: "sni wildcard", sni: "x.tunnel.cloudproxy.app", want: "tunnel.cloudproxy.app"},
		{name: "wildcard is one label", sni: "a.b.tunnel.cloudproxy.app"},
		{
			name: "expired by sni on bad host", sni: "expired.example.test",
			local: "198.19.1.4", want: "expired.example.test",
		},
		{name: "no sni v4", local: "198.19.1.3", want: "www.example.test"},
		{name: "no sni v6", local: "2001:2:0:2::2", want: "tunnel.cloudproxy.app"},
		{name: "no sni mapped v4", local: "::ffff:198.19.1.4", want: "bad.example.test"},
		{
			name: "unknown sni falls back to address", sni: "other.test",
			local: "198.19.1.4", want: "bad.example.test",
		},
		{name: "no sni unknown address", local: "198.19.1.9"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var local netip.Addr
			if tt.local != "" {
				local = netip.MustParseAddr(tt.local)
			}
			got := ""
			if h := s.pick(tt.sni, local); h != nil {
				got = h.name
			}
			if got != tt.want {
				t.Errorf("pick(%q, %s) = %q, want %q", tt.sni, tt.local, got, tt.want)
			}
		})
	}
}

// TestServe talks to the handlers over Unix socket pairs, so no network
// traffic leaves the process.
func TestServe(t *testing.T) {
	stop, cancel := context.WithCancel(context.Background())
	s := mustServer(t, stop)
	srv := s.newHTTPServer()
	ln := newPairListener()
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { cancel(); srv.Close() })

	roots := mustPool(t, filepath.Join(s.dir, labRootName+".crt"))
	h2 := &http.Client{Transport: &http.Transport{
		DialContext:       ln.dial,
		TLSClientConfig:   &tls.Config{RootCAs: roots},
		ForceAttemptHTTP2: true,
	}}
	resp, err := h2.Get("https://www.example.test/whoami")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got whoami
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		t.Fatal(err)
	}
	if got.SNI != "www.example.test" || got.ALPN != "h2" || got.Proto != "HTTP/2.0" {
		t.Errorf("whoami = %+v, want sni www.example.test over h2", got)
	}

	ctx, done := context.WithTimeout(context.Background(), 10*time.Second)
	defer done()
	h1 := &http.Client{Transport: &http.Transport{
		DialContext:     ln.dial,
		TLSClientConfig: &tls.Config{RootCAs: roots, NextProtos: []string{"http/1.1"}},
	}}
	ws, _, err := websocket.Dial(ctx, "wss://x.tunnel.cloudproxy.app/ws",
		&websocket.DialOptions{HTTPClient: h1})
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	for _, typ := range []websocket.MessageType{websocket.MessageText, websocket.MessageBinary} {
		if err := ws.Write(ctx, typ, []byte("ping")); err != nil {
			t.Fatal(err)
		}
		gotTyp, msg, err := ws.Read(ctx)
		if err != nil || gotTyp != typ || string(msg) != "ping" {
			t.Fatalf("echo of %v ping = %v %q %v", typ, gotTyp, msg, err)
		}
	}

	// Stopping closes the open WebSocket with "going away" and returns.
	readErr := make(chan error, 1)
	go func() {
		_, _, err := ws.Read(ctx)
		readErr <- err
	}()
	cancel()
	start := time.Now()
	if err := s.shutdown(srv, nil); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d >= shutdownGrace {
		t.Errorf("shutdown took %s, the whole grace period", d)
	}
	if err := <-readErr; websocket.CloseStatus(err) != websocket.StatusGoingAway {
		t.Errorf("read during shutdown: %v, want close status going away", err)
	}
}

func mustServer(t *testing.T, stop context.Context) *testServer {
	t.Helper()
	dir := t.TempDir()
	if err := writeCerts(dir, time.Now()); err != nil {
		t.Fatal(err)
	}
	s, err := loadServer(stop, dir, log.New(io.Discard, "", 0))
	if err != nil {
		t.Fatal(err)
	}
	return &testServer{server: s, dir: dir}
}

type testServer struct {
	*server
	dir string
}

// pairListener hands out the server ends of Unix socket pairs made by dial.
// Unlike net.Pipe, a socket pair buffers, so a close frame or TLS alert
// written by one side does not wait for the other to read.
type pairListener struct {
	conns     chan net.Conn
	closed    chan struct{}
	closeOnce sync.Once
}

func newPairListener() *pairListener {
	return &pairListener{conns: make(chan net.Conn), closed: make(chan struct{})}
}

func (l *pairListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *pairListener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return nil
}

func (l *pairListener) Addr() net.Addr { return &net.UnixAddr{Name: "pair", Net: "unix"} }

func (l *pairListener) dial(ctx context.Context, _, _ string) (net.Conn, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	client, err := fileConn(fds[0])
	if err != nil {
		syscall.Close(fds[1])
		return nil, err
	}
	server, err := fileConn(fds[1])
	if err != nil {
		client.Close()
		return nil, err
	}

	select {
	case l.conns <- server:
		return client, nil
	case <-l.closed:
		err = net.ErrClosed
	case <-ctx.Done():
		err = ctx.Err()
	}
	client.Close()
	server.Close()
	return nil, err
}

// fileConn turns a socket descriptor into a net.Conn and closes fd.
func fileConn(fd int) (net.Conn, error) {
	f := os.NewFile(uintptr(fd), "socketpair")
	defer f.Close()
	return net.FileConn(f)
}
