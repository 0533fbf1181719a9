package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// mustCert makes a self-signed certificate for name that is also its own
// root, and writes the certificate to DIR/NAME.pem.
func mustCert(t *testing.T, dir, name string) (tls.Certificate, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		DNSNames:              []string{name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name+".pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		0o644); err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, path
}

// pairServer serves HTTPS over Unix socket pairs: while it runs, dialTCP
// hands out the client ends, so no test traffic touches a network.
type pairServer struct {
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func (l *pairServer) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *pairServer) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *pairServer) Addr() net.Addr { return &net.UnixAddr{Name: "pair", Net: "unix"} }

func (l *pairServer) dial(ctx context.Context, _ string) (net.Conn, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	ends := make([]net.Conn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		ends[i], err = net.FileConn(f)
		f.Close()
		if err != nil {
			return nil, err
		}
	}
	select {
	case l.conns <- ends[1]:
		return ends[0], nil
	case <-l.closed:
		err = net.ErrClosed
	case <-ctx.Done():
		err = ctx.Err()
	}
	ends[0].Close()
	ends[1].Close()
	return nil, err
}

// startServer runs a stand-in for the lab server: / answers "hello",
// /bytes?n=N sends N bytes, /teapot fails, /short lies about its length.
// It returns the file of the root to trust.
func startServer(t *testing.T, name string) string {
	t.Helper()
	cert, rootFile := mustCert(t, t.TempDir(), name)
	mux := http.NewServeMux()
	mux.HandleFunc("/{$}", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "hello")
	})
	mux.HandleFunc("/bytes", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		w.Header().Set("Content-Length", strconv.Itoa(n))
		w.Write([]byte(strings.Repeat("x", n)))
	})
	mux.HandleFunc("/teapot", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusTeapot)
	})
	mux.HandleFunc("/short", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "10")
		w.Write([]byte("abc"))
		http.NewResponseController(w).Flush()
		panic(http.ErrAbortHandler)
	})
	srv := &http.Server{
		Handler:   mux,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}},
		ErrorLog:  log.New(io.Discard, "", 0),
	}
	ln := &pairServer{conns: make(chan net.Conn), closed: make(chan struct{})}
	go srv.ServeTLS(ln, "", "")

	saved := dialTCP
	dialTCP = ln.dial
	t.Cleanup(func() {
		dialTCP = saved
		srv.Close()
	})
	return rootFile
}

func TestGet(t *testing.T) {
	root := startServer(t, "www.example.test")
	_, otherRoot := mustCert(t, t.TempDir(), "other.example.test")
	ctx := context.Background()
	sink := make([]byte, 1024)

	tests := []struct {
		name    string
		ca      string
		sni     string
		path    string
		wantN   int64
		wantErr string // "" means success
	}{
		{name: "small get", ca: root, sni: "www.example.test", path: "/", wantN: 6},
		{name: "bytes", ca: root, sni: "www.example.test", path: "/bytes?n=100000",
			wantN: 100000},
		{name: "wrong root", ca: otherRoot, sni: "www.example.test", path: "/",
			wantErr: "tls handshake for www.example.test"},
		{name: "wrong name", ca: root, sni: "bad.example.test", path: "/",
			wantErr: "tls handshake for bad.example.test"},
		{name: "status", ca: root, sni: "www.example.test", path: "/teapot",
			wantErr: "status 418"},
		{name: "short body", ca: root, sni: "www.example.test", path: "/short",
			wantErr: "read body after 3 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := clientConfig(tt.ca, tt.sni)
			if err != nil {
				t.Fatal(err)
			}
			n, err := get(ctx, "192.0.2.1:443", cfg, tt.path, 5*time.Second, sink)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("get: %v", err)
			case tt.wantErr == "" && n != tt.wantN:
				t.Fatalf("get read %d bytes, want %d", n, tt.wantN)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("get error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestClientConfigNoPEM(t *testing.T) {
	path := filepath.Join(t.TempDir(), "empty.pem")
	if err := os.WriteFile(path, []byte("not a certificate"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := clientConfig(path, "x"); err == nil || !strings.Contains(err.Error(), "no PEM") {
		t.Errorf("clientConfig on a file without PEM: %v", err)
	}
}

func TestPercentile(t *testing.T) {
	var d []time.Duration
	for i := 100; i >= 1; i-- {
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	s := sortedCopy(d)
	for _, tt := range []struct {
		q    float64
		want float64
	}{{0.5, 50}, {0.99, 99}, {1, 100}, {0.001, 1}} {
		if got := percentile(s, tt.q); got != tt.want {
			t.Errorf("percentile(%g) = %g, want %g", tt.q, got, tt.want)
		}
	}
	if got := percentile(nil, 0.5); got != 0 {
		t.Errorf("percentile of nothing = %g, want 0", got)
	}
	if d[0] != 100*time.Millisecond {
		t.Error("sortedCopy changed its input")
	}
}
