package tls

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"slices"
	"strings"
	"sync/atomic"
	"time"
)

// errExchangeCut is RequestLog.Err for a response that could not be
// copied to the end, typically because either side went away.
var errExchangeCut = errors.New("response copy cut short")

// httpProxy serves the requests of one client connection, sending each
// upstream on cc, the client connection's own upstream connection.
type httpProxy struct {
	cc   *http.ClientConn
	opts BumpOptions
	// host is the URL host for requests that carry none.
	host string
	gate handlerGate
}

// exchange is what is learnt about one request while it is proxied. The
// counters are atomic because the upstream request body is read on the
// transport's goroutine, which can outlive the handler.
type exchange struct {
	start     time.Time
	status    int // sent to the client; 0 until then
	upStatus  int // the upstream's, which a 101 reaches the client as
	websocket bool
	err       error
	up, down  atomic.Int64
}

func (p *httpProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !p.gate.enter() {
		panic(http.ErrAbortHandler) // the connection is being torn down
	}
	defer p.gate.leave()

	ex := &exchange{start: time.Now()}
	if r.ProtoMajor == 1 {
		// net/http cancels an HTTP/1.x request's context when the client's
		// read side ends, and a client that half-closes after its request
		// (close_notify, FIN) still waits for the answer. The upstream
		// request must not be cancelled by that; a client that is really
		// gone fails the response write instead.
		r = r.WithContext(context.WithoutCancel(r.Context()))
	}
	r.Body = &countedBody{ReadCloser: r.Body, n: &ex.up}
	rw := &exchangeWriter{ResponseWriter: w, ex: ex}
	// ReverseProxy panics with http.ErrAbortHandler when it cannot copy
	// the response to the end; the report must be made all the same.
	finished := false
	defer func() { p.report(ex, r, finished) }()

	p.reverseProxy(ex, r).ServeHTTP(rw, r)
	finished = true
}

// reverseProxy returns the proxy for one request, in, bound to ex.
func (p *httpProxy) reverseProxy(ex *exchange, in *http.Request) *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		Director: p.direct,
		Transport: roundTripFunc(func(out *http.Request) (*http.Response, error) {
			return p.roundTrip(ex, in, out)
		}),
		ModifyResponse: func(res *http.Response) error {
			// An HTTP/1.1 upstream that closes after this response leaves
			// the client connection without an upstream: tell the client
			// so it sends its next request elsewhere.
			if res.Close && in.ProtoMajor == 1 {
				res.Header.Set("Connection", "close")
			}
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, err error) {
			ex.err = err
			w.WriteHeader(http.StatusBadGateway)
		},
		ErrorLog: discardLog,
	}
}

// direct points the outgoing request at the upstream. Method, path,
// query, Host and body stay as the client sent them.
func (p *httpProxy) direct(out *http.Request) {
	out.URL.Scheme = "https"
	out.URL.Host = out.Host
	if out.URL.Host == "" {
		out.URL.Host = p.host
	}
}

// roundTrip sends out, the request the proxy made from the client's in,
// upstream. It runs after every change ReverseProxy makes, so it is where
// the headers get their final form.
func (p *httpProxy) roundTrip(ex *exchange, in, out *http.Request) (*http.Response, error) {
	// ReverseProxy appends the client's address to X-Forwarded-For; a
	// transparent gateway passes on only what the client sent.
	if v, ok := in.Header["X-Forwarded-For"]; ok {
		out.Header["X-Forwarded-For"] = v
	} else {
		delete(out.Header, "X-Forwarded-For")
	}
	add := p.opts.AddRequestHeaders
	if p.opts.HeadersFor != nil {
		add = p.opts.HeadersFor(hostWithoutPort(out.URL.Host))
	}
	for k, v := range add {
		out.Header[http.CanonicalHeaderKey(k)] = slices.Clone(v)
	}

	res, err := p.cc.RoundTrip(out)
	if err != nil {
		return nil, err
	}
	ex.upStatus = res.StatusCode
	if res.StatusCode == http.StatusSwitchingProtocols {
		ex.websocket = strings.EqualFold(res.Header.Get("Upgrade"), "websocket")
		// After a 101 the body is the upstream connection itself, which
		// ReverseProxy joins to the hijacked client connection.
		if rwc, ok := res.Body.(io.ReadWriteCloser); ok {
			res.Body = &upgradedBody{ReadWriteCloser: rwc, ex: ex}
		}
	}
	return res, nil
}

// hostWithoutPort returns the host part of a URL host ("a.test:8443",
// "[2001:db8::1]:443", "a.test").
func hostWithoutPort(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return strings.Trim(hostport, "[]")
}

// report passes the finished exchange to OnRequest.
func (p *httpProxy) report(ex *exchange, r *http.Request, finished bool) {
	if p.opts.OnRequest == nil {
		return
	}
	if !finished && ex.err == nil {
		ex.err = errExchangeCut
	}
	status := ex.status
	if status == 0 {
		status = ex.upStatus
	}
	p.opts.OnRequest(RequestLog{
		Host:      r.Host,
		Method:    r.Method,
		Path:      r.URL.Path,
		Proto:     r.Proto,
		Status:    status,
		BytesUp:   ex.up.Load(),
		BytesDown: ex.down.Load(),
		Duration:  time.Since(ex.start),
		WebSocket: ex.websocket,
		Err:       ex.err,
	})
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// exchangeWriter records the status and body bytes sent to the client.
// Unwrap lets http.ResponseController reach Flush and Hijack beneath it.
type exchangeWriter struct {
	http.ResponseWriter
	ex *exchange
}

func (w *exchangeWriter) WriteHeader(code int) {
	// 1xx responses come from the transport's goroutine and are not final:
	// the check on code keeps them away from ex.
	if code >= 200 && w.ex.status == 0 {
		w.ex.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *exchangeWriter) Write(p []byte) (int, error) {
	if w.ex.status == 0 {
		w.ex.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.ex.down.Add(int64(n))
	return n, err
}

func (w *exchangeWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// countedBody counts the request body bytes read.
type countedBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b *countedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

// upgradedBody counts the bytes of an upgraded (101) connection: those
// written go upstream, those read go to the client.
type upgradedBody struct {
	io.ReadWriteCloser
	ex *exchange
}

func (b *upgradedBody) Read(p []byte) (int, error) {
	n, err := b.ReadWriteCloser.Read(p)
	b.ex.down.Add(int64(n))
	return n, err
}

func (b *upgradedBody) Write(p []byte) (int, error) {
	n, err := b.ReadWriteCloser.Write(p)
	b.ex.up.Add(int64(n))
	return n, err
}
