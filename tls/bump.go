package tls

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"
)

// ErrUpstreamVerify is wrapped by Bump's error when the upstream server's
// certificate fails verification; the client was then refused with an alert
// and shown no certificate.
var ErrUpstreamVerify = errors.New("upstream certificate verification failed")

// errRefused makes crypto/tls abort a client handshake with an alert.
var errRefused = errors.New("refused: upstream not verified")

// defaultHandshakeTimeout applies when BumpConfig.HandshakeTimeout is 0.
const defaultHandshakeTimeout = 10 * time.Second

// BumpConfig configures a Bumper.
type BumpConfig struct {
	// Forger forges the certificates shown to clients. Required.
	Forger *Forger
	// Roots verify upstream servers; nil means the system roots.
	Roots *x509.CertPool
	// HandshakeTimeout bounds each of the two handshakes; 0 means 10s.
	HandshakeTimeout time.Duration
}

// Bumper terminates a client's TLS with a forged certificate after
// verifying the real upstream server, and relays the plaintext between
// them. A Bumper is safe for concurrent use.
type Bumper struct {
	cfg BumpConfig
}

// BumpResult describes one bumped connection.
type BumpResult struct {
	// BytesUp and BytesDown count plaintext relayed from client to
	// upstream and from upstream to client.
	BytesUp, BytesDown int64
	// ALPN is the application protocol both sides agreed on, or "".
	ALPN string
	// Forged reports whether a forged certificate was made for the client.
	Forged bool
}

// NewBumper returns a Bumper using cfg.
func NewBumper(cfg BumpConfig) *Bumper {
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = defaultHandshakeTimeout
	}
	return &Bumper{cfg: cfg}
}

// Bump bumps one connection and returns when it is over. client must yield
// the client's ClientHello first; upstream is a connected TCP connection to
// the original destination. serverName is the client's SNI, or "" when it
// sent none: the upstream is then verified, and the certificate forged, for
// the IP address of upstream.RemoteAddr(). alpn is the client's offered
// ALPN list, possibly nil.
//
// The upstream handshake and its verification complete before the client
// is shown any certificate. If they fail, the client's handshake is aborted
// with an alert and the error wraps ErrUpstreamVerify (certificate
// rejected) or describes the handshake failure. Otherwise the client gets a
// forged certificate and the upstream's ALPN choice, and plaintext is
// relayed both ways, with half-closes passed on, until both directions end.
//
// Bump closes client and upstream before it returns. Cancelling ctx closes
// them at once and ends Bump with ctx's error.
func (b *Bumper) Bump(
	ctx context.Context, client, upstream net.Conn, serverName string, alpn []string,
) (BumpResult, error) {
	defer client.Close()
	defer upstream.Close()
	// Closing the raw connections unblocks whichever handshake, read or
	// write is pending when ctx ends.
	stop := context.AfterFunc(ctx, func() {
		client.Close()
		upstream.Close()
	})
	defer stop()

	// The order is the security property: a certificate forged before the
	// real one verified would lend the gateway CA's trust to whoever answers
	// on the upstream path, so a failure here must end in an alert only.
	target := describeTarget(serverName, upstream)
	up, cert, err := b.verifyAndForge(ctx, upstream, serverName, alpn)
	if err != nil {
		b.refuseClient(ctx, client)
		return BumpResult{}, fmt.Errorf("bump %s: %w", target, ctxErr(ctx, err))
	}

	res := BumpResult{Forged: true}
	proto := up.ConnectionState().NegotiatedProtocol
	down, err := b.serveClient(ctx, client, cert, proto)
	if err != nil {
		return res, fmt.Errorf("bump %s: client handshake: %w", target, ctxErr(ctx, err))
	}
	res.ALPN = down.ConnectionState().NegotiatedProtocol

	res.BytesUp, res.BytesDown, err = relay(down, up)
	if err != nil {
		return res, fmt.Errorf("bump %s: %w", target, ctxErr(ctx, err))
	}
	return res, nil
}

// verifyAndForge completes and verifies the upstream handshake, then forges
// the client's certificate from the verified upstream leaf.
func (b *Bumper) verifyAndForge(
	ctx context.Context, upstream net.Conn, serverName string, alpn []string,
) (*tls.Conn, *tls.Certificate, error) {
	if b.cfg.Forger == nil {
		return nil, nil, errors.New("no forger configured")
	}
	name, err := upstreamName(upstream, serverName)
	if err != nil {
		return nil, nil, err
	}

	up, err := b.handshakeUpstream(ctx, upstream, name, alpn)
	if err != nil {
		return nil, nil, err
	}
	cert, err := b.cfg.Forger.Certificate(name, up.ConnectionState().PeerCertificates[0])
	if err != nil {
		return nil, nil, err
	}
	return up, cert, nil
}

// handshakeUpstream runs the TLS client handshake on conn, verifying the
// server's chain against the configured roots and name.
func (b *Bumper) handshakeUpstream(
	ctx context.Context, conn net.Conn, name string, alpn []string,
) (*tls.Conn, error) {
	cfg := &tls.Config{
		// With an IP literal here crypto/tls sends no SNI (RFC 6066,
		// Section 3 allows only host names there) and verifies against the
		// certificate's IP SANs: what the client without SNI would check.
		ServerName: name,
		RootCAs:    b.cfg.Roots,
		NextProtos: alpn,
	}
	hctx, cancel := context.WithTimeout(ctx, b.cfg.HandshakeTimeout)
	defer cancel()

	up := tls.Client(conn, cfg)
	if err := up.HandshakeContext(hctx); err != nil {
		if isVerifyError(err) {
			return nil, fmt.Errorf("%w: %w", ErrUpstreamVerify, err)
		}
		return nil, fmt.Errorf("upstream handshake: %w", err)
	}
	return up, nil
}

// isVerifyError reports whether err says the peer's certificate was
// rejected, as opposed to the handshake failing for another reason.
func isVerifyError(err error) bool {
	var verr *tls.CertificateVerificationError
	var unknown x509.UnknownAuthorityError
	var host x509.HostnameError
	var invalid x509.CertificateInvalidError
	return errors.As(err, &verr) || errors.As(err, &unknown) ||
		errors.As(err, &host) || errors.As(err, &invalid)
}

// refuseClient reads the client's ClientHello and answers it with a fatal
// alert, so the client fails at once and visibly rather than on a timeout,
// and without ever receiving a certificate.
func (b *Bumper) refuseClient(ctx context.Context, conn net.Conn) {
	cfg := &tls.Config{
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return nil, errRefused
		},
	}
	hctx, cancel := context.WithTimeout(ctx, b.cfg.HandshakeTimeout)
	defer cancel()
	// The error is errRefused or a dead client; the upstream failure is
	// what the caller needs to hear about.
	_ = tls.Server(conn, cfg).HandshakeContext(hctx)
}

// serveClient completes the client's handshake with cert. The client is
// offered only the protocol the upstream chose, so both legs speak the same
// one: the relay copies bytes and cannot translate between HTTP versions.
func (b *Bumper) serveClient(
	ctx context.Context, conn net.Conn, cert *tls.Certificate, proto string,
) (*tls.Conn, error) {
	cfg := &tls.Config{
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return cert, nil
		},
	}
	if proto != "" {
		cfg.NextProtos = []string{proto}
	}
	hctx, cancel := context.WithTimeout(ctx, b.cfg.HandshakeTimeout)
	defer cancel()

	down := tls.Server(conn, cfg)
	if err := down.HandshakeContext(hctx); err != nil {
		return nil, err
	}
	return down, nil
}

// upstreamName returns the name to verify the upstream for and forge: the
// client's SNI in canonical form or, without one, the upstream IP address.
// Checking the SNI here keeps a malformed name from the wire out of the
// upstream handshake.
func upstreamName(upstream net.Conn, serverName string) (string, error) {
	if serverName == "" {
		return remoteIP(upstream)
	}
	name, _, err := canonicalName(serverName)
	return name, err
}

// remoteIP returns the IP address conn is connected to, without zone.
func remoteIP(conn net.Conn) (string, error) {
	addr := conn.RemoteAddr()
	ap, err := netip.ParseAddrPort(addr.String())
	if err != nil {
		return "", fmt.Errorf("no server name and upstream address %q has no IP", addr)
	}
	return ap.Addr().WithZone("").Unmap().String(), nil
}

// describeTarget names a connection in errors: its SNI and upstream address.
func describeTarget(serverName string, upstream net.Conn) string {
	sni := "(no sni)"
	if serverName != "" {
		sni = quoteWire(serverName)
	}
	return fmt.Sprintf("%s at %s", sni, upstream.RemoteAddr())
}

// ctxErr returns ctx's error if ctx has ended, since a cancelled context
// explains the failure better than the closed connection it caused.
func ctxErr(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return cerr
	}
	return err
}

// relay copies plaintext between the client (down) and upstream (up) until
// both directions end, and returns the bytes copied each way. The end of
// one direction is passed on as a half-close; any other failure ends both.
func relay(down, up *tls.Conn) (bytesUp, bytesDown int64, err error) {
	r := &relayState{conns: [2]*tls.Conn{down, up}}
	var wg sync.WaitGroup
	wg.Go(func() { bytesUp = r.copy(up, down, "client to upstream") })
	wg.Go(func() { bytesDown = r.copy(down, up, "upstream to client") })
	wg.Wait()
	return bytesUp, bytesDown, r.err
}

// relayState holds what the two directions of a relay share.
type relayState struct {
	conns [2]*tls.Conn
	once  sync.Once
	err   error
}

// copy moves src's plaintext to dst and returns the bytes written.
func (r *relayState) copy(dst, src *tls.Conn, direction string) int64 {
	n, err := io.Copy(dst, src)
	if err == nil {
		// Protocols that half-close (send a request, shut the write side,
		// read the answer) need the end of stream passed on, and the other
		// direction left running.
		if err = closeWrite(dst); peerGone(err) {
			err = nil
		}
	}
	if err != nil {
		r.fail(fmt.Errorf("relay %s: %w", direction, err))
	}
	return n
}

// fail records the relay's first error and closes both connections: the
// other direction may be blocked on a peer that will not send again.
func (r *relayState) fail(err error) {
	r.once.Do(func() {
		r.err = err
		// The raw connections, because tls.Conn.Close would first try to
		// send close_notify to a peer that may not be reading.
		r.conns[0].NetConn().Close()
		r.conns[1].NetConn().Close()
	})
}

// peerGone reports whether err only says that the peer has already closed
// or reset: passing on the end of stream is then moot, not a failure.
func peerGone(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ENOTCONN) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET)
}

// closeWrite sends close_notify on c and, where the transport allows, a
// TCP FIN, so the peer sees the end of stream however it reads.
func closeWrite(c *tls.Conn) error {
	if err := c.CloseWrite(); err != nil {
		return fmt.Errorf("close write: %w", err)
	}
	if cw, ok := c.NetConn().(interface{ CloseWrite() error }); ok {
		if err := cw.CloseWrite(); err != nil {
			return fmt.Errorf("close write: %w", err)
		}
	}
	return nil
}
