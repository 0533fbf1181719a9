package tls

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// ErrUpstreamVerify is wrapped by Bump's error when the upstream server's
// certificate fails verification. The client was then never shown a
// certificate from the gateway CA: it got an alert (VerifyReject) or one
// from the untrusted CA (VerifyMimic).
var ErrUpstreamVerify = errors.New("upstream certificate verification failed")

// errRefused makes crypto/tls abort a client handshake with an alert.
var errRefused = errors.New("refused: upstream not verified")

// defaultHandshakeTimeout applies when BumpConfig.HandshakeTimeout is 0.
const defaultHandshakeTimeout = 10 * time.Second

// upstreamSessions bounds the upstream TLS sessions kept for resumption,
// one per server name.
const upstreamSessions = 4096

// defaultHalfCloseTimeout applies when BumpConfig.HalfCloseTimeout is 0.
const defaultHalfCloseTimeout = 2 * time.Minute

// VerifyFailureMode says what a client is shown when the upstream server's
// certificate fails verification.
type VerifyFailureMode int

const (
	// VerifyReject aborts the client's handshake with an alert: the client
	// sees a bare connection failure and no certificate.
	VerifyReject VerifyFailureMode = iota
	// VerifyMimic completes the client's handshake with a certificate for
	// the name from the Forger's untrusted CA, then closes the connection
	// without contacting the upstream further. A browser thus shows its own
	// certificate error page rather than a connection failure.
	VerifyMimic
)

// String returns the mode's configuration name.
func (m VerifyFailureMode) String() string {
	switch m {
	case VerifyReject:
		return "reject"
	case VerifyMimic:
		return "mimic"
	}
	return fmt.Sprintf("VerifyFailureMode(%d)", int(m))
}

// ParseVerifyFailureMode returns the mode named s: "reject" or "mimic".
func ParseVerifyFailureMode(s string) (VerifyFailureMode, error) {
	switch s {
	case "reject":
		return VerifyReject, nil
	case "mimic":
		return VerifyMimic, nil
	}
	return 0, fmt.Errorf("verify failure mode %s is not reject or mimic", quoteWire(s))
}

// KeyExchange says which key exchange groups both TLS legs of a bumped
// connection use.
type KeyExchange int

const (
	// KeyExchangeHybrid prefers X25519MLKEM768, the post-quantum hybrid,
	// on both legs, with X25519 and the NIST curves after it: crypto/tls's
	// defaults. Recorded traffic stays safe from a future quantum computer.
	KeyExchangeHybrid KeyExchange = iota
	// KeyExchangeClassic uses X25519, P-256 and P-384 only. The ML-KEM
	// work is about a fifth of a bumped connection's CPU on the gateway,
	// and clients on the LAN save theirs too; what is given up is the
	// post-quantum protection of both legs.
	KeyExchangeClassic
)

// String returns the key exchange's configuration name.
func (k KeyExchange) String() string {
	switch k {
	case KeyExchangeHybrid:
		return "hybrid"
	case KeyExchangeClassic:
		return "classic"
	}
	return fmt.Sprintf("KeyExchange(%d)", int(k))
}

// ParseKeyExchange returns the key exchange named s: "hybrid" or "classic".
func ParseKeyExchange(s string) (KeyExchange, error) {
	switch s {
	case "hybrid":
		return KeyExchangeHybrid, nil
	case "classic":
		return KeyExchangeClassic, nil
	}
	return 0, fmt.Errorf("key exchange %s is not hybrid or classic", quoteWire(s))
}

// curves returns the tls.Config.CurvePreferences for k; nil is crypto/tls's
// default order.
func (k KeyExchange) curves() []tls.CurveID {
	if k == KeyExchangeClassic {
		return []tls.CurveID{tls.X25519, tls.CurveP256, tls.CurveP384}
	}
	return nil
}

// BumpConfig configures a Bumper.
type BumpConfig struct {
	// Forger forges the certificates shown to clients. Required.
	Forger *Forger
	// Roots verify upstream servers; nil means the system roots.
	Roots *x509.CertPool
	// HandshakeTimeout bounds each of the two handshakes; 0 means 10s.
	HandshakeTimeout time.Duration
	// HalfCloseTimeout is how long a raw-relayed connection may stay open
	// once one side has closed its direction; 0 means 2 minutes.
	HalfCloseTimeout time.Duration
	// VerifyFailure says what the client sees when the upstream fails
	// verification; the zero value is VerifyReject.
	VerifyFailure VerifyFailureMode
	// KeyExchange picks the key exchange groups of both legs; the zero
	// value is KeyExchangeHybrid.
	KeyExchange KeyExchange
}

// Bumper terminates a client's TLS with a forged certificate after
// verifying the real upstream server, and relays the plaintext between
// them, as HTTP where it is HTTP. A Bumper is safe for concurrent use.
type Bumper struct {
	cfg BumpConfig
	// sessions holds upstream TLS sessions: a resumed handshake skips the
	// certificate chain and its signature checks, which are most of the
	// upstream leg's cost. crypto/tls keys them by server name, keeps the
	// verified chain with each, and refuses one whose certificate has
	// expired or does not cover the name, so a resumption is as trusted
	// as the verification that created it.
	sessions tls.ClientSessionCache
	// upstreamHTTP makes the per-connection HTTP clients; see
	// newUpstreamTransports.
	upstreamHTTP upstreamTransports
	// tickets are shared by every client connection, so that clients
	// resume with the gateway.
	tickets ticketKeys
}

// BumpResult describes one bumped connection.
type BumpResult struct {
	// BytesUp and BytesDown count plaintext read from the client and
	// written to it. When the plaintext is relayed raw they are also the
	// bytes written to and read from the upstream; served as HTTP, they
	// include the client's HTTP framing.
	BytesUp, BytesDown int64
	// ALPN is the application protocol both sides agreed on, or "".
	ALPN string
	// Forged reports whether a certificate from the gateway CA was made
	// for the client.
	Forged bool
	// HTTP reports whether the plaintext was served as HTTP, request by
	// request, rather than relayed as raw bytes.
	HTTP bool
	// Mimicked reports whether the client, after the upstream failed
	// verification under VerifyMimic, was sent a certificate from the
	// untrusted CA.
	Mimicked bool
}

// NewBumper returns a Bumper using cfg.
func NewBumper(cfg BumpConfig) *Bumper {
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = defaultHandshakeTimeout
	}
	if cfg.HalfCloseTimeout <= 0 {
		cfg.HalfCloseTimeout = defaultHalfCloseTimeout
	}
	return &Bumper{cfg: cfg, upstreamHTTP: newUpstreamTransports(),
		sessions: tls.NewLRUClientSessionCache(upstreamSessions)}
}

// Bump bumps one connection and returns when it is over. client must yield
// the client's ClientHello first; upstream is a connected TCP connection to
// the original destination. serverName is the client's SNI, or "" when it
// sent none: the upstream is then verified, and the certificate forged, for
// the IP address of upstream.RemoteAddr(). alpn is the client's offered
// ALPN list, possibly nil.
//
// The upstream handshake and its verification complete before the client
// is shown any certificate. If the upstream certificate is rejected, the
// error wraps ErrUpstreamVerify and the client gets what
// BumpConfig.VerifyFailure says; if the handshake fails otherwise, the
// client gets an alert. If all is well, the client gets a forged
// certificate and the upstream's ALPN choice.
//
// The plaintext is then served as HTTP when the protocol is "h2" or
// "http/1.1", or when none was agreed and the client's first bytes are an
// HTTP/1.x request line: each request goes upstream on this connection's
// upstream, with opts applied. Anything else is relayed raw both ways,
// with half-closes passed on, until both directions end.
//
// Bump closes client and upstream before it returns, and makes no
// OnRequest call after. Cancelling ctx closes them at once and ends Bump
// with ctx's error.
func (b *Bumper) Bump(
	ctx context.Context, client, upstream net.Conn, serverName string, alpn []string,
	opts BumpOptions,
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

	// The order is the security property: a certificate from the gateway
	// CA made before the real one verified would lend its trust to whoever
	// answers on the upstream path, so a failure here never gets one.
	target := describeTarget(serverName, upstream)
	name, err := upstreamName(upstream, serverName)
	var up *tls.Conn
	var certs certPicker
	if err == nil {
		up, certs, err = b.verifyAndForge(ctx, upstream, name, alpn)
	}
	if err != nil {
		res := b.answerFailure(ctx, client, upstream, name, err)
		return res, fmt.Errorf("bump %s: %w", target, ctxErr(ctx, err))
	}

	res := BumpResult{Forged: true}
	proto := up.ConnectionState().NegotiatedProtocol
	down, err := b.serveClient(ctx, client, certs, proto, true)
	if err != nil {
		return res, fmt.Errorf("bump %s: client handshake: %w", target, ctxErr(ctx, err))
	}
	res.ALPN = down.ConnectionState().NegotiatedProtocol

	err = b.plaintext(ctx, &res, down, up, name, opts)
	if err != nil {
		return res, fmt.Errorf("bump %s: %w", target, ctxErr(ctx, err))
	}
	return res, nil
}

// plaintext moves the plaintext of a bumped connection to name, as HTTP
// where it is HTTP, and fills in res's byte counts.
func (b *Bumper) plaintext(
	ctx context.Context, res *BumpResult, down, up *tls.Conn, name string, opts BumpOptions,
) error {
	var client plainConn = down
	switch res.ALPN {
	case "h2", "http/1.1":
		res.HTTP = true
	case "":
		client, res.HTTP = sniffHTTP1(down)
	}
	if !res.HTTP {
		var err error
		res.BytesUp, res.BytesDown, err = relay(client, up, b.cfg.HalfCloseTimeout)
		return err
	}

	proto := res.ALPN
	if proto == "" {
		proto = "http/1.1"
	}
	counted := &countedConn{plainConn: client}
	err := b.serveHTTP(ctx, counted, up, proto, name, opts)
	res.BytesUp, res.BytesDown = counted.read.Load(), counted.written.Load()
	return err
}

// verifyAndForge completes and verifies the upstream handshake for name,
// and returns the picker that forges the client's certificate from the
// verified upstream leaf.
func (b *Bumper) verifyAndForge(
	ctx context.Context, upstream net.Conn, name string, alpn []string,
) (*tls.Conn, certPicker, error) {
	if b.cfg.Forger == nil {
		return nil, nil, errors.New("no forger configured")
	}
	up, err := b.handshakeUpstream(ctx, upstream, name, alpn)
	if err != nil {
		return nil, nil, err
	}

	leaf := up.ConnectionState().PeerCertificates[0]
	return up, func(kt KeyType) (*tls.Certificate, error) {
		return b.cfg.Forger.Certificate(name, leaf, kt)
	}, nil
}

// certPicker forges (or finds in the cache) the certificate of a key type.
type certPicker func(KeyType) (*tls.Certificate, error)

// forClient picks the certificate once the client's hello is known: the
// ECDSA one for every client that can use it, and the RSA one only for a
// client that offers no ECDSA signature scheme or suite. Forging lazily
// means a new name costs one forgery, not one per key type.
func (pick certPicker) forClient(chi *tls.ClientHelloInfo) (*tls.Certificate, error) {
	cert, err := pick(KeyECDSA)
	if err != nil {
		return nil, err
	}
	if chi.SupportsCertificate(cert) == nil {
		return cert, nil
	}
	return pick(KeyRSA)
}

// answerFailure answers the client after the upstream side failed with
// err: with an untrusted certificate for name if err is a verification
// failure and the mode is VerifyMimic, otherwise, or if that cannot be
// made, with an alert.
func (b *Bumper) answerFailure(
	ctx context.Context, client, upstream net.Conn, name string, err error,
) BumpResult {
	if b.cfg.VerifyFailure == VerifyMimic && errors.Is(err, ErrUpstreamVerify) {
		// Nothing more goes to a server that failed verification.
		upstream.Close()
		if b.mimicClient(ctx, client, name) {
			return BumpResult{Mimicked: true}
		}
	}
	b.refuseClient(ctx, client)
	return BumpResult{}
}

// mimicClient shows the client a certificate for name from the untrusted
// CA and reports whether it could be made. The handshake fails when the
// client rejects the certificate, as it should; if the client accepts it
// anyway, the connection is closed all the same.
func (b *Bumper) mimicClient(ctx context.Context, client net.Conn, name string) bool {
	certs := certPicker(func(kt KeyType) (*tls.Certificate, error) {
		return b.cfg.Forger.UntrustedCertificate(name, kt)
	})
	// Forge before the handshake so that a failure answers with an alert.
	if _, err := certs(KeyECDSA); err != nil {
		return false
	}
	if down, err := b.serveClient(ctx, client, certs, "", false); err == nil {
		down.Close()
	}
	return true
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
		ServerName:         name,
		RootCAs:            b.cfg.Roots,
		NextProtos:         alpn,
		ClientSessionCache: b.sessions,
		CurvePreferences:   b.cfg.KeyExchange.curves(),
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

// serveClient completes the client's handshake with a certificate from
// certs. The client is offered only the protocol the upstream chose, so
// both legs speak the same one: the raw relay copies bytes, and the HTTP
// proxy forwards each request on the same HTTP version.
//
// With resumable, the client may resume a session from an earlier bumped
// connection and is given a ticket for later ones. A resumed handshake
// shows no certificate, so only a connection whose upstream passed
// verification may be resumable: a client shown the untrusted CA's
// certificate must not skip it with an old ticket, and gets none.
func (b *Bumper) serveClient(
	ctx context.Context, conn net.Conn, certs certPicker, proto string, resumable bool,
) (*tls.Conn, error) {
	cfg := &tls.Config{
		GetCertificate:         certs.forClient,
		SessionTicketsDisabled: !resumable,
		CurvePreferences:       b.cfg.KeyExchange.curves(),
	}
	if proto != "" {
		cfg.NextProtos = []string{proto}
	}
	if resumable {
		keys, err := b.tickets.at(time.Now())
		if err != nil {
			return nil, fmt.Errorf("session ticket keys: %w", err)
		}
		cfg.SetSessionTicketKeys(keys)
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
