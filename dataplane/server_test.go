package dataplane

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// syncBuffer collects log output written from the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) lines(t *testing.T) []map[string]any {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(s.b.String()), "\n") {
		var m map[string]any
		if l != "" && json.Unmarshal([]byte(l), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

// mustServer serves cfg on a loopback listener; each opt adjusts the
// Server before it starts accepting.
func mustServer(t *testing.T, cfg Config, opts ...func(*Server)) (*Server, *net.TCPListener, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	core := zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()),
		zapcore.AddSync(logs), zap.DebugLevel)
	cfg.Logger = zap.New(core)
	if cfg.Policy == nil {
		cfg.Policy = defaultTestPolicy(t)
	}
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	for _, opt := range opts {
		opt(s)
	}
	go s.Serve(l)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})
	return s, l, logs
}

// notLocal makes the server treat every address, loopback too, as one it
// may relay to.
func notLocal(s *Server) { s.isLocal = func(netip.Addr) bool { return false } }

// waitConn waits for the server's one connection log line.
func waitConn(t *testing.T, logs *syncBuffer) map[string]any {
	t.Helper()
	for range 100 {
		for _, m := range logs.lines(t) {
			if m["msg"] == "connection" {
				return m
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("no connection log line")
	return nil
}

// A connection whose original destination is the host itself must be
// refused before a byte is read: the dataplane is no way into the gateway.
func TestServerRefusesLocalDestination(t *testing.T) {
	_, l, logs := mustServer(t, Config{})
	// The reset may already arrive while connecting.
	if c, err := net.Dial("tcp", l.Addr().String()); err == nil {
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Fatal("read from a refused connection succeeded")
		}
	}
	m := waitConn(t, logs)
	if reason, _ := m["reason"].(string); m["action"] != "block" ||
		!strings.Contains(reason, "gateway") {
		t.Errorf("log line %v, want action block with a reason naming the gateway", m)
	}
}

// A client that sends nothing is cut at the hello deadline, and the log line
// says why.
func TestServerCutsSilentClient(t *testing.T) {
	// Loopback counts as local; this test is about the deadline.
	s, l, logs := mustServer(t, Config{HelloTimeout: 200 * time.Millisecond}, notLocal)
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	start := time.Now()
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("read from a silent connection succeeded")
	}
	if waited := time.Since(start); waited > 3*time.Second {
		t.Errorf("silent client held for %v, want about the 200ms deadline", waited)
	}
	m := waitConn(t, logs)
	if e, _ := m["error"].(string); m["action"] != "block" || m["hello"] != "timeout" ||
		!strings.Contains(e, "timeout") {
		t.Errorf("log line %v, want action block, hello timeout and the error", m)
	}
	if n := s.Stats().Hellos(ResultTimeout); n != 1 {
		t.Errorf("timeout counter = %d, want 1", n)
	}
}

// A plain HTTP request on the intercepted port gets the not_tls action.
func TestServerNotTLS(t *testing.T) {
	_, l, logs := mustServer(t, Config{}, notLocal)
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("GET / HTTP/1.1\r\nHost: example.test\r\n\r\n"))
	m := waitConn(t, logs)
	if m["hello"] != "not_tls" || m["action"] != "block" {
		t.Errorf("log line %v, want hello not_tls and action block", m)
	}
}

// A client that drips its hello one byte at a time is cut at the hello
// deadline too: the deadline covers the whole hello, not each read.
func TestServerCutsSlowClient(t *testing.T) {
	_, l, logs := mustServer(t, Config{HelloTimeout: 300 * time.Millisecond}, notLocal)
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	hello := []byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01} // a record that never completes
	for _, b := range hello {
		if _, err := c.Write([]byte{b}); err != nil {
			break // already cut
		}
		time.Sleep(100 * time.Millisecond)
	}
	m := waitConn(t, logs)
	if m["hello"] != "timeout" || m["action"] != "block" {
		t.Errorf("log line %v, want hello timeout and action block", m)
	}
}
