package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// shutdownGrace bounds how long a SIGTERM waits for requests, WebSocket
// closing handshakes and echo connections before the process exits.
const shutdownGrace = 5 * time.Second

// servedHost is a labHost with its certificate loaded.
type servedHost struct {
	labHost
	cert *tls.Certificate

	// For a perName host: the root that signs the per-name leaves, and
	// those made so far. They certify the host's own key.
	issuer *issuer
	mu     sync.Mutex
	names  map[string]*tls.Certificate
}

// certFor returns the certificate h shows for sni: for a perName host and
// a name below it, that name's own leaf, made on first use.
func (h *servedHost) certFor(sni string) (*tls.Certificate, error) {
	sni = strings.TrimSuffix(strings.ToLower(sni), ".")
	if !h.perName || sni == "" || !nameMatches(h.dns[0], sni) {
		return h.cert, nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if cert, ok := h.names[sni]; ok {
		return cert, nil
	}
	cert, err := nameLeaf(sni, h.cert.PrivateKey.(*ecdsa.PrivateKey), h.issuer)
	if err != nil {
		return nil, err
	}
	h.names[sni] = cert
	return cert, nil
}

// server answers for every labHost on every address it listens on.
type server struct {
	hosts []*servedHost
	log   *log.Logger

	// stop is cancelled when the process is told to exit; hijacked
	// connections (WebSocket, TCP echo) watch it because http.Server.Shutdown
	// does not know about them.
	stop  context.Context
	conns tracker
}

// tracker counts hijacked connections so shutdown can wait for them. After
// wait has begun, add refuses new ones, which closes the race between a late
// accept and WaitGroup.Wait.
type tracker struct {
	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
}

// add reports whether the caller may proceed; if so it must call done.
func (t *tracker) add() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	t.wg.Add(1)
	return true
}

func (t *tracker) done() { t.wg.Done() }

func (t *tracker) wait() {
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
	t.wg.Wait()
}

// loadServer reads NAME.crt and NAME.key for every labHost from dir.
func loadServer(stop context.Context, dir string, logger *log.Logger) (*server, error) {
	s := &server{log: logger, stop: stop}
	for _, h := range labHosts {
		base := filepath.Join(dir, h.name)
		cert, err := tls.LoadX509KeyPair(base+".crt", base+".key")
		if err != nil {
			return nil, fmt.Errorf("load certificate for %s (run 'labserver certs' first): %w",
				h.name, err)
		}
		sh := &servedHost{labHost: h, cert: &cert}
		if h.perName {
			if sh.issuer, err = loadIssuer(dir, labRootName); err != nil {
				return nil, err
			}
			if _, ok := cert.PrivateKey.(*ecdsa.PrivateKey); !ok {
				return nil, fmt.Errorf("key of %s is %T, not ECDSA", h.name, cert.PrivateKey)
			}
			sh.names = map[string]*tls.Certificate{}
		}
		s.hosts = append(s.hosts, sh)
	}
	return s, nil
}

// pick returns the host a connection is for: the one whose names match sni,
// else the one owning the local address, else nil. An unknown SNI falls back
// to the address, as a real server hands out its default certificate.
func (s *server) pick(sni string, local netip.Addr) *servedHost {
	sni = strings.TrimSuffix(strings.ToLower(sni), ".")
	if sni != "" {
		for _, h := range s.hosts {
			for _, pattern := range h.dns {
				if nameMatches(pattern, sni) {
					return h
				}
			}
		}
	}

	local = local.Unmap()
	for _, h := range s.hosts {
		for _, ip := range h.ips {
			if ip == local {
				return h
			}
		}
	}
	return nil
}

// nameMatches reports whether name is covered by pattern, where a leading
// "*." stands for exactly one label (RFC 6125, Section 6.4.3).
func nameMatches(pattern, name string) bool {
	if suffix, ok := strings.CutPrefix(pattern, "*."); ok {
		label, rest, found := strings.Cut(name, ".")
		return found && label != "" && rest == suffix
	}
	return pattern == name
}

func (s *server) getCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	local := addrOf(hello.Conn.LocalAddr())
	h := s.pick(hello.ServerName, local)
	if h == nil {
		return nil, fmt.Errorf("no certificate for sni %q on local address %s",
			hello.ServerName, local)
	}
	return h.certFor(hello.ServerName)
}

// addrOf returns the IP of a TCP address, or the zero Addr for anything else.
func addrOf(a net.Addr) netip.Addr {
	if tcp, ok := a.(*net.TCPAddr); ok {
		ip, _ := netip.AddrFromSlice(tcp.IP)
		return ip.Unmap()
	}
	return netip.Addr{}
}

func (s *server) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/{$}", s.handleRoot)
	mux.HandleFunc("/ws", s.handleWebSocket)
	mux.HandleFunc("/whoami", s.handleWhoami)
	mux.HandleFunc("/headers", s.handleHeaders)
	mux.HandleFunc("/bytes", s.handleBytes)
	mux.HandleFunc("/browser", handleBrowser)
	mux.HandleFunc("/slow", handleSlow)
	return s.logRequests(mux)
}

func (s *server) handleRoot(w http.ResponseWriter, r *http.Request) {
	name := r.Host
	if h := s.pick(serverName(r), addrOf(localAddr(r))); h != nil {
		name = h.name
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintf(w, "hello from %s\n", name)
}

// whoami is the /whoami answer: what the server saw of the connection.
type whoami struct {
	Remote string `json:"remote"`
	Local  string `json:"local"`
	SNI    string `json:"sni"`
	Proto  string `json:"proto"`
	ALPN   string `json:"alpn"`
}

func (s *server) handleWhoami(w http.ResponseWriter, r *http.Request) {
	resp := whoami{Remote: r.RemoteAddr, SNI: serverName(r), Proto: r.Proto}
	if a := localAddr(r); a != nil {
		resp.Local = a.String()
	}
	if r.TLS != nil {
		resp.ALPN = r.TLS.NegotiatedProtocol
	}
	writeJSON(w, resp)
}

func (s *server) handleHeaders(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, r.Header)
}

// maxBytes bounds what one /bytes request may ask for.
const maxBytes = 1 << 40

// bytesChunk is what /bytes writes over and over: one shared, read-only
// buffer, so a large download costs the server little more than TLS.
var bytesChunk = func() []byte {
	b := make([]byte, 256<<10)
	for i := range b {
		b[i] = byte(i*7 + i>>8)
	}
	return b
}()

// handleBytes streams the number of bytes given by ?n= (at most maxBytes)
// with a Content-Length, for throughput measurements.
func (s *server) handleBytes(w http.ResponseWriter, r *http.Request) {
	n, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
	if err != nil || n < 0 || n > maxBytes {
		http.Error(w, fmt.Sprintf("n=%q is not a byte count in 0-%d",
			r.URL.Query().Get("n"), int64(maxBytes)), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
	for n > 0 {
		chunk := bytesChunk[:min(n, int64(len(bytesChunk)))]
		if _, err := w.Write(chunk); err != nil {
			return // the client went away
		}
		n -= int64(len(chunk))
	}
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	if err := json.NewEncoder(w).Encode(v); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
	}
}

// handleWebSocket echoes every message back with its type (text or binary)
// until the peer closes or the server stops.
//
// LIMITATION: WebSocket needs an HTTP/1.1 upgrade here; a client that
// negotiated h2 gets 501 instead of RFC 8441 extended CONNECT; WebSocket
// clients offering only http/1.1 in ALPN avoid it.
func (s *server) handleWebSocket(w http.ResponseWriter, r *http.Request) {
	if !s.conns.add() {
		http.Error(w, "server stopping", http.StatusServiceUnavailable)
		return
	}
	defer s.conns.done()

	// Lab clients include scripts and browsers on lab names; any origin is fine.
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
	if err != nil {
		return // Accept has written the HTTP error
	}
	defer c.CloseNow()
	c.SetReadLimit(1 << 20)

	stop := context.AfterFunc(s.stop, func() {
		c.Close(websocket.StatusGoingAway, "server stopping")
	})
	defer stop()

	// The request context must not be used after a hijack; reads end when the
	// peer or the AfterFunc above closes the connection.
	ctx := context.Background()
	for {
		typ, msg, err := c.Read(ctx)
		if err != nil {
			return
		}
		if err := c.Write(ctx, typ, msg); err != nil {
			return
		}
	}
}

func serverName(r *http.Request) string {
	if r.TLS == nil {
		return ""
	}
	return r.TLS.ServerName
}

func localAddr(r *http.Request) net.Addr {
	a, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	return a
}

// statusWriter records the response status for the access log. Unwrap lets
// http.ResponseController and the WebSocket hijack reach the real writer.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// logRequests writes one line per finished request.
func (s *server) logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		next.ServeHTTP(sw, r)
		s.log.Printf("http remote=%s local=%v sni=%q proto=%s method=%s host=%q path=%q"+
			" status=%d duration=%s",
			r.RemoteAddr, localAddr(r), serverName(r), r.Proto, r.Method, r.Host,
			r.URL.Path, sw.status, time.Since(start).Round(time.Microsecond))
	})
}

// serveEcho copies every byte a client sends back to it, one goroutine per
// connection, until the listener is closed.
func (s *server) serveEcho(ln net.Listener) {
	for {
		conn, err := ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				s.log.Printf("tcp echo accept on %s: %v", ln.Addr(), err)
			}
			return
		}
		if !s.conns.add() {
			conn.Close()
			return
		}
		go func() {
			defer s.conns.done()
			s.echo(conn)
		}()
	}
}

func (s *server) echo(conn net.Conn) {
	defer conn.Close()
	stop := context.AfterFunc(s.stop, func() { conn.Close() })
	defer stop()

	start := time.Now()
	n, err := io.Copy(conn, conn)
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	s.log.Printf("tcp-echo remote=%s local=%s bytes=%d duration=%s err=%v",
		conn.RemoteAddr(), conn.LocalAddr(), n, time.Since(start).Round(time.Microsecond), err)
}

// serve runs HTTPS on every listen address and TCP echo on every echo
// address until ctx is cancelled or a listener fails.
func serve(ctx context.Context, dir string, listen, echo []string) error {
	logger := log.New(os.Stderr, "labserver: ", log.LstdFlags|log.Lmicroseconds)
	s, err := loadServer(ctx, dir, logger)
	if err != nil {
		return err
	}

	tlsListeners, err := listenAll(listen)
	if err != nil {
		return err
	}
	echoListeners, err := listenAll(echo)
	if err != nil {
		closeAll(tlsListeners)
		return err
	}

	srv := s.newHTTPServer()
	errc := make(chan error, len(tlsListeners))
	for _, ln := range tlsListeners {
		go func() { errc <- srv.ServeTLS(ln, "", "") }()
	}
	for _, ln := range echoListeners {
		go s.serveEcho(ln)
	}
	logger.Printf("serving https on %s; tcp echo on %s",
		strings.Join(listen, ","), strings.Join(echo, ","))

	select {
	case <-ctx.Done():
		err = nil
	case err = <-errc:
		err = fmt.Errorf("serve https: %w", err)
	}
	return errors.Join(err, s.shutdown(srv, echoListeners))
}

func (s *server) newHTTPServer() *http.Server {
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetHTTP2(true)
	return &http.Server{
		Handler:   s.handler(),
		Protocols: protocols,
		TLSConfig: &tls.Config{
			GetCertificate: s.getCertificate,
			NextProtos:     []string{"h2", "http/1.1"},
		},
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          s.log,
	}
}

// shutdown stops accepting, lets requests finish and closes hijacked
// connections, all within shutdownGrace.
func (s *server) shutdown(srv *http.Server, echoListeners []net.Listener) error {
	s.log.Printf("shutting down")
	closeAll(echoListeners)

	ctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	err := srv.Shutdown(ctx)

	done := make(chan struct{})
	go func() { s.conns.wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		s.log.Printf("shutdown: connections still open after %s", shutdownGrace)
	}
	if err != nil {
		return fmt.Errorf("shut down https: %w", err)
	}
	return nil
}

// listenAll opens a TCP listener on every address, or none if one fails.
func listenAll(addrs []string) ([]net.Listener, error) {
	var lns []net.Listener
	for _, addr := range addrs {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			closeAll(lns)
			return nil, fmt.Errorf("listen on %s: %w", addr, err)
		}
		lns = append(lns, ln)
	}
	return lns, nil
}

func closeAll(lns []net.Listener) {
	for _, ln := range lns {
		ln.Close()
	}
}
