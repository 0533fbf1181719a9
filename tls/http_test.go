package tls

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// echoedRequest is what the upstream's /headers endpoint reports.
type echoedRequest struct {
	Proto, Host, Method, URI string
	Header                   http.Header
}

// startHTTPUpstream serves HTTPS for up.test on loopback, with a
// certificate from the lab root, speaking h2 and http/1.1:
//
//	/headers  reports the request as JSON (echoedRequest)
//	/echo     returns the request body, and its SHA-256 as trailer X-Sum
//	/ws       echoes WebSocket messages
func startHTTPUpstream(t *testing.T, lab *bumpLab) string {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("/headers", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(echoedRequest{
			Proto: r.Proto, Host: r.Host, Method: r.Method, URI: r.RequestURI, Header: r.Header,
		})
	})
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Sum")
		sum := sha256.New()
		io.Copy(io.MultiWriter(w, sum), r.Body)
		w.Header().Set("X-Sum", hex.EncodeToString(sum.Sum(nil)))
	})
	mux.HandleFunc("/ws", wsEcho)

	srv := httptest.NewUnstartedServer(mux)
	srv.EnableHTTP2 = true
	srv.TLS = &tls.Config{
		Certificates: []tls.Certificate{mustServerCert(t, lab.root, lab.rootKey, "up.test")},
		NextProtos:   []string{"h2", "http/1.1"},
	}
	srv.Config.ErrorLog = discardLog
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

func wsEcho(w http.ResponseWriter, r *http.Request) {
	c, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	defer c.CloseNow()
	for {
		typ, msg, err := c.Read(r.Context())
		if err != nil {
			return
		}
		if err := c.Write(r.Context(), typ, msg); err != nil {
			return
		}
	}
}

// requestLogs collects what OnRequest reports.
type requestLogs struct {
	mu   sync.Mutex
	logs []RequestLog
}

func (l *requestLogs) add(r RequestLog) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.logs = append(l.logs, r)
}

func (l *requestLogs) get() []RequestLog {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]RequestLog(nil), l.logs...)
}

// alpnFor returns the ALPN list of a client speaking proto: "h2",
// "http/1.1", or "" for HTTP/1.1 without ALPN.
func alpnFor(proto string) []string {
	if proto == "" {
		return nil
	}
	return []string{proto}
}

// httpClient returns a client that trusts only the gateway CA, sends every
// request to addr, and speaks proto as alpnFor describes.
func httpClient(t *testing.T, lab *bumpLab, addr, proto string) *http.Client {
	t.Helper()
	var protocols http.Protocols
	if proto == "h2" {
		protocols.SetHTTP2(true)
	} else {
		protocols.SetHTTP1(true)
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		},
		TLSClientConfig: &tls.Config{RootCAs: poolOf(lab.ca.Cert), NextProtos: alpnFor(proto)},
		Protocols:       &protocols,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

var injected = http.Header{"X-Googapps-Allowed-Domains": {"example.com"}}

func TestBumpHTTP(t *testing.T) {
	for _, proto := range []string{"h2", "http/1.1", ""} {
		name := "alpn " + proto
		if proto == "" {
			name = "no alpn, sniffed"
		}
		t.Run(name, func(t *testing.T) {
			lab := newBumpLab(t)
			upAddr := startHTTPUpstream(t, lab)
			var logs requestLogs
			opts := BumpOptions{AddRequestHeaders: injected, OnRequest: logs.add}
			addr, out := startBumpOpts(t, context.Background(), lab, upAddr, "up.test",
				alpnFor(proto), opts)
			client := httpClient(t, lab, addr, proto)

			wantProto := "HTTP/1.1"
			if proto == "h2" {
				wantProto = "HTTP/2.0"
			}
			checkHeaders(t, client, wantProto)
			body := checkEcho(t, client)

			client.Transport.(*http.Transport).CloseIdleConnections()
			o := waitBump(t, out)
			if o.err != nil {
				t.Fatalf("Bump: %v", o.err)
			}
			if !o.res.HTTP || o.res.ALPN != proto || !o.res.Forged {
				t.Errorf("result %+v, want HTTP with ALPN %q", o.res, proto)
			}
			if o.res.BytesUp < int64(body) || o.res.BytesDown < int64(body) {
				t.Errorf("result counts %d up, %d down; want at least the %d-byte body",
					o.res.BytesUp, o.res.BytesDown, body)
			}
			checkLogs(t, logs.get(), wantProto, int64(body))
		})
	}
}

// checkHeaders asks /headers and checks what the upstream received.
func checkHeaders(t *testing.T, client *http.Client, wantProto string) {
	t.Helper()
	req, _ := http.NewRequest("GET", "https://up.test/headers?q=a%20b&x=1&x=2", nil)
	req.Header.Set("X-GoogApps-Allowed-Domains", "consumer.test")
	req.Header.Set("X-Client", "kept")
	res, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET /headers: %v", err)
	}
	defer res.Body.Close()
	if res.StatusCode != 200 {
		t.Fatalf("GET /headers: status %d", res.StatusCode)
	}
	var got echoedRequest
	if err := json.NewDecoder(res.Body).Decode(&got); err != nil {
		t.Fatalf("decode /headers: %v", err)
	}

	if got.Proto != wantProto || got.Host != "up.test" || got.Method != "GET" ||
		got.URI != "/headers?q=a%20b&x=1&x=2" {
		t.Errorf("upstream saw %s %s %q host %q, want GET %s %q host up.test",
			got.Method, got.Proto, got.URI, got.Host, wantProto, "/headers?q=a%20b&x=1&x=2")
	}
	if v := got.Header["X-Googapps-Allowed-Domains"]; len(v) != 1 || v[0] != "example.com" {
		t.Errorf("upstream saw X-GoogApps-Allowed-Domains %q, want only example.com", v)
	}
	if v := got.Header.Get("X-Client"); v != "kept" {
		t.Errorf("upstream saw X-Client %q, want kept", v)
	}
	if v, ok := got.Header["X-Forwarded-For"]; ok {
		t.Errorf("upstream saw X-Forwarded-For %q, which the client did not send", v)
	}
}

// checkEcho posts 1 MiB to /echo and checks body and trailer; it returns
// the body size.
func checkEcho(t *testing.T, client *http.Client) int {
	t.Helper()
	data := make([]byte, 1<<20)
	rand.Read(data)
	res, err := client.Post("https://up.test/echo", "application/octet-stream",
		bytes.NewReader(data))
	if err != nil {
		t.Fatalf("POST /echo: %v", err)
	}
	defer res.Body.Close()
	got, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("read /echo: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("/echo returned %d bytes, not the %d sent", len(got), len(data))
	}
	sum := sha256.Sum256(data)
	if v := res.Trailer.Get("X-Sum"); v != hex.EncodeToString(sum[:]) {
		t.Errorf("trailer X-Sum %q, want the body's SHA-256", v)
	}
	return len(data)
}

func checkLogs(t *testing.T, logs []RequestLog, proto string, body int64) {
	t.Helper()
	if len(logs) != 2 {
		t.Fatalf("%d request logs, want 2: %+v", len(logs), logs)
	}
	get, post := logs[0], logs[1]
	if get.Host != "up.test" || get.Method != "GET" || get.Path != "/headers" ||
		get.Proto != proto || get.Status != 200 || get.Err != nil || get.BytesDown == 0 {
		t.Errorf("GET log %+v", get)
	}
	if post.Method != "POST" || post.Path != "/echo" || post.Status != 200 ||
		post.BytesUp != body || post.BytesDown != body || post.Err != nil ||
		post.Duration <= 0 || post.WebSocket {
		t.Errorf("POST log %+v, want %d bytes each way", post, body)
	}
}

func TestBumpWebSocket(t *testing.T) {
	lab := newBumpLab(t)
	upAddr := startHTTPUpstream(t, lab)
	var logs requestLogs
	opts := BumpOptions{AddRequestHeaders: injected, OnRequest: logs.add}
	addr, out := startBumpOpts(t, context.Background(), lab, upAddr, "up.test",
		[]string{"http/1.1"}, opts)
	client := httpClient(t, lab, addr, "http/1.1")

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, res, err := websocket.Dial(ctx, "wss://up.test/ws", &websocket.DialOptions{HTTPClient: client})
	if err != nil {
		t.Fatalf("websocket dial: %v", err)
	}
	if res.StatusCode != http.StatusSwitchingProtocols {
		t.Errorf("upgrade status %d", res.StatusCode)
	}
	var sent int64
	for i := range 5 {
		msg := bytes.Repeat([]byte{byte('a' + i)}, 1000*(i+1))
		sent += int64(len(msg))
		if err := c.Write(ctx, websocket.MessageBinary, msg); err != nil {
			t.Fatalf("write message %d: %v", i, err)
		}
		_, got, err := c.Read(ctx)
		if err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("message %d: echo of %d bytes, error %v", i, len(got), err)
		}
	}
	c.Close(websocket.StatusNormalClosure, "done")

	if o := waitBump(t, out); o.err != nil || !o.res.HTTP {
		t.Fatalf("Bump result %+v, error %v", o.res, o.err)
	}
	got := logs.get()
	if len(got) != 1 {
		t.Fatalf("%d request logs, want 1: %+v", len(got), got)
	}
	ws := got[0]
	if !ws.WebSocket || ws.Status != 101 || ws.Path != "/ws" || ws.Method != "GET" ||
		ws.BytesUp < sent || ws.BytesDown < sent || ws.Duration <= 0 {
		t.Errorf("WebSocket log %+v, want 101 and at least %d bytes each way", ws, sent)
	}
	t.Logf("WebSocket log %+v", ws)
}

// TestBumpHTTPUpstreamGone checks that a client is not left on a
// connection whose upstream has closed: the next request is answered by
// the client reconnecting, not by a 502.
func TestBumpHTTPUpstreamGone(t *testing.T) {
	lab := newBumpLab(t)
	var conns sync.WaitGroup
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		io.WriteString(w, "bye")
	})
	srv := httptest.NewUnstartedServer(mux)
	srv.TLS = &tls.Config{
		Certificates: []tls.Certificate{mustServerCert(t, lab.root, lab.rootKey, "up.test")},
		NextProtos:   []string{"http/1.1"},
	}
	srv.StartTLS()
	defer srv.Close()

	addr := serveBumps(t, lab, srv.Listener.Addr().String(), "up.test",
		[]string{"http/1.1"}, &conns)
	client := httpClient(t, lab, addr, "http/1.1")
	for i := range 3 {
		res, err := client.Get("https://up.test/")
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != 200 || string(body) != "bye" || !res.Close {
			t.Errorf("request %d: status %d, body %q, close %v", i, res.StatusCode, body, res.Close)
		}
	}
}

// serveBumps bumps every connection to addr it accepts, towards upAddr.
func serveBumps(
	t testing.TB, lab *bumpLab, upAddr, serverName string, alpn []string, conns *sync.WaitGroup,
) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ln.Close()
		conns.Wait()
	})
	go func() {
		for {
			client, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Go(func() {
				upstream, err := net.Dial("tcp", upAddr)
				if err != nil {
					client.Close()
					return
				}
				lab.bumper.Bump(context.Background(), client, upstream, serverName, alpn,
					BumpOptions{})
			})
		}
	}()
	return ln.Addr().String()
}

func TestLooksLikeRequestLine(t *testing.T) {
	tests := []struct {
		in   string
		want bool
	}{
		{"GET / HTTP/1.1\r\nHost: a\r\n\r\n", true},
		{"POST /x?y=1 HTTP/1.0\r\n", true},
		{"OPTIONS * HTTP/1.1\r\n", true},
		{"GET http://a/ HTTP/1.1\r\n", true},
		{"CONNECT a:443 HTTP/1.1\r\n", true},
		{"GET /long-target-still-arriving", true},
		{"GET / HTTP/2.0\r\n", false},
		{"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", false},
		{"get / HTTP/1.1\r\n", false},
		{"GET", false},
		{"GET ", false},
		{"SSH-2.0-OpenSSH_9.6\r\n", false},
		{"\x00\x01binary", false},
		{"hello world", false},
	}
	for _, tt := range tests {
		if got := looksLikeRequestLine([]byte(tt.in)); got != tt.want {
			t.Errorf("looksLikeRequestLine(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

// TestBumpNoALPNServerSpeaksFirst checks the fallback when a client
// without ALPN sends nothing within the sniff timeout: the upstream's
// greeting reaches it, late, and the relay is raw.
func TestBumpNoALPNServerSpeaksFirst(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for the sniff timeout")
	}
	lab := newBumpLab(t)
	cert := mustServerCert(t, lab.root, lab.rootKey, "up.test")
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		io.WriteString(conn, "220 greeting\r\n")
		io.Copy(conn, conn)
	}()
	addr, out := startBump(t, context.Background(), lab, ln.Addr().String(), "up.test", nil)

	var sawCert bool
	conn, err := dialClient(addr, clientConfig(lab, "up.test", nil, &sawCert))
	if err != nil {
		t.Fatalf("client handshake: %v", err)
	}
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	greeting := make([]byte, len("220 greeting\r\n"))
	start := time.Now()
	if _, err := io.ReadFull(conn, greeting); err != nil || string(greeting) != "220 greeting\r\n" {
		t.Fatalf("greeting %q, error %v", greeting, err)
	}
	if d := time.Since(start); d > sniffTimeout+time.Second {
		t.Errorf("greeting took %v, want at most the sniff timeout %v", d, sniffTimeout)
	}
	request := "GET / HTTP/1.1\r\n\r\n"
	if got := echoRoundTrip(t, conn, []byte(request)); string(got) != request {
		t.Errorf("echo %q, want the raw bytes back", got)
	}
	if o := waitBump(t, out); o.err != nil || o.res.HTTP {
		t.Errorf("Bump result %+v, error %v; want a raw relay", o.res, o.err)
	}
}

// TestBumpHTTPUpstreamIdleClose checks that when the upstream closes an
// idle connection, the client's connection is closed too and Bump ends,
// though the client itself would keep it open.
func TestBumpHTTPUpstreamIdleClose(t *testing.T) {
	for _, proto := range []string{"h2", "http/1.1"} {
		t.Run(proto, func(t *testing.T) {
			lab := newBumpLab(t)
			srv := httptest.NewUnstartedServer(http.HandlerFunc(
				func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
			srv.EnableHTTP2 = true
			srv.TLS = &tls.Config{
				Certificates: []tls.Certificate{mustServerCert(t, lab.root, lab.rootKey, "up.test")},
				NextProtos:   []string{"h2", "http/1.1"},
			}
			srv.Config.IdleTimeout = 100 * time.Millisecond
			srv.Config.ErrorLog = discardLog
			srv.StartTLS()
			defer srv.Close()

			addr, out := startBump(t, context.Background(), lab, srv.Listener.Addr().String(),
				"up.test", alpnFor(proto))
			client := httpClient(t, lab, addr, proto)
			res, err := client.Get("https://up.test/")
			if err != nil {
				t.Fatalf("GET: %v", err)
			}
			io.Copy(io.Discard, res.Body)
			res.Body.Close()

			if o := waitBump(t, out); o.err != nil || !o.res.HTTP {
				t.Errorf("Bump result %+v, error %v", o.res, o.err)
			}
		})
	}
}

// Headers follow each request's host, not the connection's SNI: a request
// for another name on the same connection gets that name's headers.
func TestBumpHeadersFollowHost(t *testing.T) {
	lab := newBumpLab(t)
	upAddr := startHTTPUpstream(t, lab)
	asked := make(chan string, 4)
	opts := BumpOptions{HeadersFor: func(host string) http.Header {
		asked <- host
		if host == "other.test" {
			return http.Header{"X-Policy": {"other"}}
		}
		return http.Header{"X-Policy": {"sni"}}
	}}
	addr, _ := startBumpOpts(t, context.Background(), lab, upAddr, "up.test",
		[]string{"http/1.1"}, opts)
	client := httpClient(t, lab, addr, "http/1.1")
	for host, want := range map[string]string{"up.test": "sni", "other.test": "other"} {
		req, _ := http.NewRequest("GET", "https://up.test/headers", nil)
		req.Host = host
		res, err := client.Do(req)
		if err != nil {
			t.Fatalf("GET with Host %s: %v", host, err)
		}
		var got echoedRequest
		json.NewDecoder(res.Body).Decode(&got)
		res.Body.Close()
		if v := got.Header.Get("X-Policy"); v != want {
			t.Errorf("Host %s: upstream saw X-Policy %q, want %q", host, v, want)
		}
		if h := <-asked; h != host {
			t.Errorf("HeadersFor asked for %q, want %q", h, host)
		}
	}
}

// An HTTP/1.1 client that half-closes after its request (close_notify and
// FIN, as some scripts do) still gets the answer, not a 502. Before the fix
// most tries failed, so several are made.
func TestBumpHTTP1HalfClosedClient(t *testing.T) {
	lab := newBumpLab(t)
	upAddr := startHTTPUpstream(t, lab)
	for i := range 5 {
		addr, _ := startBumpOpts(t, context.Background(), lab, upAddr, "up.test",
			[]string{"http/1.1"}, BumpOptions{})
		c, err := tls.Dial("tcp", addr, &tls.Config{ServerName: "up.test",
			RootCAs: poolOf(lab.ca.Cert), NextProtos: []string{"http/1.1"}})
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(c, "GET /headers HTTP/1.1\r\nHost: up.test\r\n\r\n")
		if err := c.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		c.NetConn().(*net.TCPConn).CloseWrite()
		res, err := http.ReadResponse(bufio.NewReader(c), nil)
		c.Close()
		if err != nil {
			t.Fatalf("try %d: read response: %v", i, err)
		}
		if res.StatusCode != http.StatusOK {
			t.Fatalf("try %d: status %d, want 200", i, res.StatusCode)
		}
	}
}

// A second bump to the same upstream resumes the upstream TLS session
// (skipping the chain verification it already did) and still forges from
// the upstream certificate the session was verified with.
func TestBumpResumesUpstreamSessions(t *testing.T) {
	lab := newBumpLab(t)
	var resumed atomic.Int32
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.TLS.DidResume {
			resumed.Add(1)
		}
		io.WriteString(w, "ok")
	})
	srv := httptest.NewUnstartedServer(mux)
	srv.TLS = &tls.Config{
		Certificates: []tls.Certificate{mustServerCert(t, lab.root, lab.rootKey, "up.test")},
		NextProtos:   []string{"http/1.1"},
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)

	for i := range 3 {
		addr, out := startBumpOpts(t, context.Background(), lab, srv.Listener.Addr().String(),
			"up.test", []string{"http/1.1"}, BumpOptions{})
		client := httpClient(t, lab, addr, "http/1.1")
		res, err := client.Get("https://up.test/")
		if err != nil {
			t.Fatalf("GET %d: %v", i, err)
		}
		if res.TLS.PeerCertificates[0].Subject.CommonName != "up.test" {
			t.Errorf("GET %d: forged for %q", i, res.TLS.PeerCertificates[0].Subject.CommonName)
		}
		res.Body.Close()
		client.Transport.(*http.Transport).CloseIdleConnections()
		if o := waitBump(t, out); o.err != nil {
			t.Fatalf("Bump %d: %v", i, o.err)
		}
	}
	if n := resumed.Load(); n < 1 {
		t.Errorf("%d of the later upstream handshakes resumed, want at least 1", n)
	}
}
