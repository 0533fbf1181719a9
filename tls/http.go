package tls

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// BumpOptions are per-connection settings for Bump's HTTP handling. The
// zero value proxies requests unchanged and reports none.
type BumpOptions struct {
	// AddRequestHeaders are set on every request sent upstream, over
	// HTTP/1.1 and HTTP/2 alike, replacing any value the client sent.
	// Optional; Bump does not modify it.
	AddRequestHeaders http.Header
	// HeadersFor, if not nil, replaces AddRequestHeaders: it is asked for
	// the headers of each request by the request's host (without port).
	// A client may send requests for several hosts over one connection
	// (HTTP/2 coalescing, or a Host that differs from the SNI), so a policy
	// keyed on names must look at each request, not at the SNI.
	HeadersFor func(host string) http.Header
	// OnRequest, if not nil, is called once per finished request (a
	// WebSocket session counting as one), from the goroutine that served
	// it; calls for requests of one HTTP/2 connection may overlap.
	OnRequest func(RequestLog)
}

// RequestLog describes one request proxied by Bump.
type RequestLog struct {
	// Host is the request's Host (HTTP/2 :authority), Method its method,
	// Path its URL path without the query, Proto the client's version,
	// such as "HTTP/1.1" or "HTTP/2.0".
	Host, Method, Path, Proto string
	// Status is the status code the client was sent: 101 for a WebSocket,
	// 502 when the upstream could not be asked; 0 if none was sent.
	Status int
	// BytesUp and BytesDown count body bytes (WebSocket frames after the
	// upgrade) from client to upstream and back, without HTTP framing.
	BytesUp, BytesDown int64
	// Duration runs from the request's arrival to the end of its response
	// (of the session, for a WebSocket).
	Duration time.Duration
	// WebSocket reports whether the request upgraded to a WebSocket.
	WebSocket bool
	// Err says why the exchange failed or was cut short, or is nil.
	Err error
}

// discardLog takes the messages net/http would print: the package returns
// its failures (RequestLog.Err) and never logs.
var discardLog = log.New(io.Discard, "", 0)

// serveHTTP serves the client's requests with net/http and proxies each
// one to upstream on up, which speaks proto like the client. It returns
// when the client connection is finished and no handler runs any more.
func (b *Bumper) serveHTTP(
	ctx context.Context, client *countedConn, up *tls.Conn, proto, name string,
	opts BumpOptions,
) error {
	cc, err := b.upstreamHTTP.clientConn(ctx, up, proto, name)
	if err != nil {
		return err
	}
	defer cc.Close()

	p := &httpProxy{cc: cc, opts: opts, host: hostForURL(name)}
	ln := newOneConnListener(client)
	srv := &http.Server{
		Handler:   p,
		Protocols: protocolsFor(proto),
		ConnState: ln.connState,
		ErrorLog:  discardLog,
	}
	stopWatch := shutdownWhenDead(cc, srv)
	defer stopWatch()

	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve(ln)
		ln.serveEnded()
	}()
	<-ln.done
	p.gate.closeAndWait()
	srv.Close()
	<-served
	return ctx.Err()
}

// shutdownWhenDead shuts srv down gracefully once cc can carry no more
// requests (the upstream closed, or sent GOAWAY): an HTTP/1.1 client then
// sees the connection close after its current response, an HTTP/2 client
// gets GOAWAY, and both reconnect rather than collect 502s from a client
// connection whose upstream is gone. The returned func ends the watch.
func shutdownWhenDead(cc *http.ClientConn, srv *http.Server) func() {
	ctx, cancel := context.WithCancel(context.Background())
	var once sync.Once
	cc.SetStateHook(func(cc *http.ClientConn) {
		if cc.Err() != nil {
			// The hook may run inside RoundTrip, so it must not block.
			once.Do(func() { go srv.Shutdown(ctx) })
		}
	})
	return func() {
		cc.SetStateHook(nil)
		cancel()
	}
}

// protocolsFor returns the server protocols for a client that agreed on
// proto. To net/http the client connection is an ordinary one (a
// countedConn is no *tls.Conn), so HTTP/2 is spoken by prior knowledge
// (RFC 9113, Section 3.3): ALPN already chose it.
func protocolsFor(proto string) *http.Protocols {
	var p http.Protocols
	if proto == "h2" {
		p.SetUnencryptedHTTP2(true)
	} else {
		p.SetHTTP1(true)
	}
	return &p
}

// hostForURL returns name as a URL host: IPv6 literals in brackets.
func hostForURL(name string) string {
	if strings.Contains(name, ":") {
		return "[" + name + "]"
	}
	return name
}

// upstreamTransports make the HTTP client of one upstream connection. The
// connection is TLS already, handshaken and verified by Bump, so to the
// transports it is an ordinary connection carrying plaintext: they reach
// it with the "http" scheme, and h2 speaks HTTP/2 by prior knowledge, as
// ALPN already chose it. Both are shared by all connections of a Bumper;
// each connection gets its own http.ClientConn from them.
type upstreamTransports struct {
	h1, h2 *http.Transport
}

// upstreamConnKey is the context key under which clientConn hands the
// upstream connection to the transport's dialer.
type upstreamConnKey struct{}

func newUpstreamTransports() upstreamTransports {
	var h1, h2 http.Protocols
	h1.SetHTTP1(true)
	h2.SetUnencryptedHTTP2(true)
	return upstreamTransports{h1: newUpstreamTransport(&h1), h2: newUpstreamTransport(&h2)}
}

func newUpstreamTransport(protocols *http.Protocols) *http.Transport {
	return &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			conn, ok := ctx.Value(upstreamConnKey{}).(net.Conn)
			if !ok {
				return nil, errors.New("dial upstream: no connection handed over")
			}
			return conn, nil
		},
		Protocols: protocols,
		// The client asked for the encodings it takes: the proxy must
		// neither add gzip nor decode the response.
		DisableCompression: true,
	}
}

// clientConn returns an HTTP client speaking proto on up only, for the
// server name (used where a request has no Host).
func (t upstreamTransports) clientConn(
	ctx context.Context, up *tls.Conn, proto, name string,
) (*http.ClientConn, error) {
	tr := t.h1
	if proto == "h2" {
		tr = t.h2
	}
	ctx = context.WithValue(ctx, upstreamConnKey{}, net.Conn(up))
	cc, err := tr.NewClientConn(ctx, "http", net.JoinHostPort(name, "443"))
	if err != nil {
		return nil, fmt.Errorf("start %s client to upstream: %w", proto, err)
	}
	return cc, nil
}

// countedConn counts the plaintext read from and written to the client.
// It has no ConnectionState method on purpose: net/http then serves it as
// an ordinary connection (see protocolsFor).
type countedConn struct {
	plainConn
	read, written atomic.Int64
}

func (c *countedConn) Read(p []byte) (int, error) {
	n, err := c.plainConn.Read(p)
	c.read.Add(int64(n))
	return n, err
}

func (c *countedConn) Write(p []byte) (int, error) {
	n, err := c.plainConn.Write(p)
	c.written.Add(int64(n))
	return n, err
}

// oneConnListener hands its connection to the first Accept, then blocks
// until closed. done is closed once the server is finished with the
// connection: closed it, hijacked it, or stopped before accepting it.
type oneConnListener struct {
	conn   net.Conn
	closed chan struct{}
	done   chan struct{}

	mu       sync.Mutex
	taken    bool
	isClosed bool
	doneOnce sync.Once
}

func newOneConnListener(conn net.Conn) *oneConnListener {
	return &oneConnListener{
		conn:   conn,
		closed: make(chan struct{}),
		done:   make(chan struct{}),
	}
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	if !l.taken && !l.isClosed {
		l.taken = true
		l.mu.Unlock()
		return l.conn, nil
	}
	l.mu.Unlock()
	<-l.closed
	return nil, net.ErrClosed
}

func (l *oneConnListener) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.isClosed {
		l.isClosed = true
		close(l.closed)
	}
	return nil
}

func (l *oneConnListener) Addr() net.Addr { return l.conn.LocalAddr() }

// connState is the server's ConnState hook.
func (l *oneConnListener) connState(_ net.Conn, state http.ConnState) {
	if state == http.StateClosed || state == http.StateHijacked {
		l.finish()
	}
}

// serveEnded is called when Serve has returned. If it never accepted the
// connection (a shutdown came first), no hook will report it finished.
func (l *oneConnListener) serveEnded() {
	l.mu.Lock()
	taken := l.taken
	l.mu.Unlock()
	if !taken {
		l.finish()
	}
}

func (l *oneConnListener) finish() {
	l.doneOnce.Do(func() { close(l.done) })
}

// handlerGate counts running handlers and, once closed, turns new ones
// away. A handler for an HTTP/2 stream runs on its own goroutine and may
// start after the connection has ended; the gate keeps it from reporting
// after Bump has returned.
type handlerGate struct {
	mu      sync.Mutex
	closed  bool
	running sync.WaitGroup
}

// enter reports whether a handler may run; if so, it must call leave.
func (g *handlerGate) enter() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false
	}
	g.running.Add(1)
	return true
}

func (g *handlerGate) leave() { g.running.Done() }

// closeAndWait turns new handlers away and waits for running ones.
func (g *handlerGate) closeAndWait() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	g.running.Wait()
}
