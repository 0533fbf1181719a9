package dataplane

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// BumpFunc terminates TLS on client with a forged certificate and relays to
// upstream, closing both before it returns. client replays the ClientHello
// first. It reports the plaintext bytes moved each way.
type BumpFunc func(ctx context.Context, client, upstream net.Conn,
	req BumpRequest) (up, down int64, err error)

// BumpRequest is what the dataplane knows about a connection it bumps.
type BumpRequest struct {
	Client, Dst netip.AddrPort
	// ServerName is the client's SNI, lowercase, or "" when it sent none.
	ServerName string
	// ALPN lists the protocols the client offered.
	ALPN []string
}

// Config is what a Server needs. Zero durations take the defaults below.
type Config struct {
	Policy *Policy
	// Bump handles ActionBump. Without it, bumped connections are blocked
	// with a reason saying so.
	Bump BumpFunc
	// HelloTimeout bounds the wait for a whole ClientHello.
	HelloTimeout time.Duration
	// MaxHello bounds the bytes read while waiting for it.
	MaxHello int
	// DialTimeout bounds connecting to the original destination.
	DialTimeout time.Duration
	// HalfCloseTimeout is how long a spliced connection may stay open
	// once one side has closed its direction.
	HalfCloseTimeout time.Duration
	Logger           *zap.Logger
}

const (
	DefaultHelloTimeout     = 10 * time.Second
	DefaultDialTimeout      = 10 * time.Second
	DefaultHalfCloseTimeout = 2 * time.Minute
)

// Server accepts steered connections and applies the policy to each. It is
// safe for concurrent use; Serve may be called once per listener.
type Server struct {
	// cfg is replaced as a whole by Reload; each connection loads it once.
	cfg atomic.Pointer[Config]
	log *zap.Logger
	// isLocal reports whether an address is the gateway's own.
	isLocal func(netip.Addr) bool
	stats   Stats

	mu        sync.Mutex
	listeners map[*net.TCPListener]struct{}
	conns     map[net.Conn]struct{}
	wg        sync.WaitGroup
	closing   atomic.Bool
	ctx       context.Context
	cancel    context.CancelFunc
}

// NewServer returns a Server for cfg.
func NewServer(cfg Config) (*Server, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		log:       cfg.Logger,
		isLocal:   newLocalAddrs().contains,
		listeners: map[*net.TCPListener]struct{}{},
		conns:     map[net.Conn]struct{}{},
		ctx:       ctx,
		cancel:    cancel,
	}
	s.cfg.Store(&cfg)
	return s, nil
}

// Reload makes cfg apply to connections accepted from now on; connections
// already established keep the configuration they started with. The
// logger is not replaced.
func (s *Server) Reload(cfg Config) error {
	if err := cfg.setDefaults(); err != nil {
		return err
	}
	s.cfg.Store(&cfg)
	return nil
}

func (cfg *Config) setDefaults() error {
	if cfg.Policy == nil {
		return errors.New("dataplane config has no policy")
	}
	if cfg.HelloTimeout <= 0 {
		cfg.HelloTimeout = DefaultHelloTimeout
	}
	if cfg.MaxHello <= 0 {
		cfg.MaxHello = DefaultMaxHello
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.HalfCloseTimeout <= 0 {
		cfg.HalfCloseTimeout = DefaultHalfCloseTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	return nil
}

// Stats returns the server's counters.
func (s *Server) Stats() *Stats { return &s.stats }

// Serve accepts connections on l until Shutdown. It returns nil after
// Shutdown and the accept error otherwise.
func (s *Server) Serve(l *net.TCPListener) error {
	s.mu.Lock()
	if s.closing.Load() {
		s.mu.Unlock()
		return nil
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()

	for {
		c, err := l.AcceptTCP()
		if err != nil {
			if s.closing.Load() {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			// Out of descriptors and similar: back off instead of
			// spinning, the condition may pass.
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("accept on %s: %w", l.Addr(), err)
			}
			s.log.Warn("accept", zap.Stringer("listen", l.Addr()), zap.Error(err))
			time.Sleep(50 * time.Millisecond)
			continue
		}
		if !s.track(c) {
			c.Close()
			return nil
		}
		go s.handle(c)
	}
}

func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing.Load() {
		return false
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	return true
}

func (s *Server) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.wg.Done()
}

// Shutdown stops accepting at once, then waits for established connections
// to end until ctx is done, and then closes those that remain.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing.Store(true)
	for l := range s.listeners {
		l.Close()
	}
	s.mu.Unlock()

	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	// Counted before the cancel, which ends parked tunnels at once.
	s.mu.Lock()
	n := len(s.conns)
	s.mu.Unlock()
	s.cancel()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	<-done
	return fmt.Errorf("closed %d connections still open after the drain time", n)
}

// conn is one accepted connection's facts, filled as it is handled and
// logged once at the end.
type conn struct {
	client     *net.TCPConn
	clientAddr netip.AddrPort
	dst        netip.AddrPort
	start      time.Time
	result     HelloResult
	helloRead  bool // result holds how reading the hello ended
	reason     string
	sni        string
	action     Action
	rule       int
	up, down   int64
	err        error
	counted    bool // in the active gauge of its action
	// relaying is set once the splice relay runs on its own; it finishes
	// the connection, not the handler.
	relaying bool
}

func (s *Server) handle(c *net.TCPConn) {
	cfg := s.cfg.Load()
	cn := &conn{
		client:     c,
		clientAddr: addrPort(c.RemoteAddr()),
		dst:        addrPort(c.LocalAddr()),
		start:      time.Now(),
		rule:       -1,
	}
	s.serve(cn, cfg)
	if !cn.relaying {
		s.finish(cn)
	}
}

// finish counts and logs a connection that has ended and stops tracking it.
func (s *Server) finish(cn *conn) {
	if cn.counted {
		s.stats.active[cn.action].Add(-1)
	}
	s.stats.finish(cn)
	s.logConn(cn)
	s.untrack(cn.client)
}

func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}

func (s *Server) serve(cn *conn, cfg *Config) {
	if s.isLocal(cn.dst.Addr()) {
		cn.action, cn.reason = ActionBlock, "destination is an address of the gateway"
		reset(cn.client)
		return
	}

	cn.client.SetReadDeadline(time.Now().Add(cfg.HelloTimeout))
	// A silent client waits here without a hello buffer: thousands of
	// them cost sockets and goroutines, not 16 KiB each.
	cn.helloRead = true
	if err := waitReadable(cn.client); err != nil {
		cn.result = helloResult(0, err)
		s.stats.hellos[cn.result].Add(1)
		cn.action, cn.err = ActionBlock, fmt.Errorf("wait for client hello: %w", err)
		reset(cn.client)
		return
	}
	buf := GetHelloBuffer()
	released := false
	release := func() {
		if !released {
			buf.Release()
			released = true
		}
	}
	defer release()

	var h Hello
	err := ReadHello(cn.client, buf, cfg.MaxHello, &h)
	cn.result = helloResult(h.Class, err)
	s.stats.hellos[cn.result].Add(1)
	if err != nil && h.Class != HelloMalformed {
		// Nothing usable arrived: timeout, early close or too large.
		cn.action, cn.err = ActionBlock, fmt.Errorf("read client hello: %w", err)
		reset(cn.client)
		return
	}
	cn.client.SetReadDeadline(time.Time{})
	if err != nil {
		// A malformed hello is a classification with a policy action,
		// not a failure of the connection; the reason says what was wrong.
		cn.reason = err.Error()
	}
	cn.decide(cfg.Policy, &h)

	s.stats.active[cn.action].Add(1)
	cn.counted = true
	switch cn.action {
	case ActionSplice:
		s.splice(cn, cfg, h.Raw, release)
	case ActionBump:
		s.bump(cn, cfg, &h, release)
	default:
		if cn.reason == "" {
			cn.reason = "blocked by policy"
		}
		reset(cn.client)
	}
}

func (cn *conn) decide(p *Policy, h *Hello) {
	if h.Class != HelloNamed {
		cn.action = p.ForClass(h.Class)
		return
	}
	cn.sni = normalizeName(h.ServerName)
	cn.action, cn.rule = p.Decide(h.ServerName)
}

// normalizeName is the server name as logged and as handed to the bump
// path: lowercase, without the trailing dot the parser already removed.
func normalizeName(b []byte) string {
	out := make([]byte, len(b))
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		out[i] = c
	}
	return string(out)
}

// waitReadable returns when c has bytes (or an end of stream) to read, or
// with the read deadline's error, without consuming anything.
func waitReadable(c *net.TCPConn) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var b [1]byte
	return raw.Read(func(fd uintptr) bool {
		// The poller is edge-triggered and forgets a readiness nobody
		// tried to read, so each round must look at the socket itself.
		_, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		return err != unix.EAGAIN && err != unix.EINTR
	})
}

// reset closes c with an RST rather than a FIN, so the client fails at once
// instead of waiting for a TLS answer that will never come.
func reset(c *net.TCPConn) {
	c.SetLinger(0)
	c.Close()
}

func (s *Server) dial(cn *conn, cfg *Config) (*net.TCPConn, error) {
	d := net.Dialer{Timeout: cfg.DialTimeout}
	up, err := d.DialContext(s.ctx, "tcp", cn.dst.String())
	if err != nil {
		s.stats.dialErrors.Add(1)
		return nil, fmt.Errorf("dial original destination %s: %w", cn.dst, err)
	}
	return up.(*net.TCPConn), nil
}

func (s *Server) bump(cn *conn, cfg *Config, h *Hello, release func()) {
	if cfg.Bump == nil {
		cn.err = errors.New("bump requested but no CA is configured")
		reset(cn.client)
		return
	}
	up, err := s.dial(cn, cfg)
	if err != nil {
		cn.err = err
		reset(cn.client)
		return
	}
	// The bump path holds the hello for the whole TLS handshake; a private
	// copy lets the pooled buffer go back at once.
	replay := append([]byte(nil), h.Raw...)
	var sni string
	if h.Class == HelloNamed {
		sni = cn.sni
	}
	alpn := h.ALPNProtocols()
	release()

	client := &replayConn{Conn: cn.client, pending: replay}
	cn.up, cn.down, cn.err = cfg.Bump(s.ctx, client, up, BumpRequest{
		Client: cn.clientAddr, Dst: cn.dst, ServerName: sni, ALPN: alpn,
	})
}

func (cn *conn) fields() []zap.Field {
	fields := []zap.Field{
		zap.Stringer(keyClient, cn.clientAddr),
		zap.Stringer(keyDst, cn.dst),
		zap.String(keySNI, cn.sni),
		zap.Stringer(keyAction, cn.action),
		zap.Int64(keyBytesUp, cn.up),
		zap.Int64(keyBytesDown, cn.down),
		zap.Duration(keyDuration, time.Since(cn.start)),
	}
	if cn.helloRead {
		fields = append(fields, zap.Stringer(keyHello, cn.result))
	}
	if cn.reason != "" {
		fields = append(fields, zap.String(keyReason, cn.reason))
	}
	if cn.rule >= 0 {
		fields = append(fields, zap.Int(keyRule, cn.rule))
	}
	if cn.err != nil {
		fields = append(fields, zap.Error(cn.err))
	}
	return fields
}

func (s *Server) logConn(cn *conn) {
	s.log.Info("connection", cn.fields()...)
}

// Log field keys, one per concept across the dataplane.
const (
	keyClient    = "client"
	keyDst       = "dst"
	keySNI       = "sni"
	keyAction    = "action"
	keyRule      = "rule"
	keyHello     = "hello"
	keyReason    = "reason"
	keyBytesUp   = "bytes_up"
	keyBytesDown = "bytes_down"
	keyDuration  = "duration"
)

// replayConn returns pending before reading from the connection: the bump
// path's TLS server must see the ClientHello the dataplane already read.
type replayConn struct {
	net.Conn
	pending []byte
}

func (r *replayConn) Read(p []byte) (int, error) {
	if len(r.pending) > 0 {
		n := copy(p, r.pending)
		r.pending = r.pending[n:]
		return n, nil
	}
	return r.Conn.Read(p)
}

// CloseWrite half-closes the underlying TCP connection.
func (r *replayConn) CloseWrite() error {
	if cw, ok := r.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
