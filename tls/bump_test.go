package tls

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"testing"
	"time"
)

// bumpLab is a gateway CA, a lab "public" root the gateway trusts for
// upstream verification, and a Bumper wired to both.
type bumpLab struct {
	ca      *CA
	forger  *Forger
	bumper  *Bumper
	root    *x509.Certificate
	rootKey crypto.Signer
}

func newBumpLab(t testing.TB) *bumpLab {
	t.Helper()
	ca, _ := mustInitCA(t)
	forger := mustForger(t, ca, 16)
	root, rootKey := mustRoot(t, "lab public root")
	return &bumpLab{
		ca:     ca,
		forger: forger,
		bumper: NewBumper(BumpConfig{
			Forger:           forger,
			Roots:            poolOf(root),
			HandshakeTimeout: 5 * time.Second,
		}),
		root:    root,
		rootKey: rootKey,
	}
}

// startEchoServer serves TLS on loopback with cert, echoing everything and
// half-closing when the client does. The ClientHello of each handshake is
// sent on the returned channel.
func startEchoServer(t testing.TB, cert tls.Certificate) (string, <-chan *tls.ClientHelloInfo) {
	t.Helper()
	hellos := make(chan *tls.ClientHelloInfo, 4)
	cfg := &tls.Config{
		Certificates: []tls.Certificate{cert},
		NextProtos:   []string{"x-raw", "x-other"},
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			hellos <- hello
			return nil, nil
		},
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go echo(conn.(*tls.Conn))
		}
	}()
	return ln.Addr().String(), hellos
}

func echo(conn *tls.Conn) {
	defer conn.Close()
	if _, err := io.Copy(conn, conn); err != nil {
		return
	}
	conn.CloseWrite()
}

type bumpOutcome struct {
	res BumpResult
	err error
}

// startBump listens on loopback for one client, dials upstreamAddr and runs
// Bump on the pair. It returns the address for the client to dial.
func startBump(
	t *testing.T, ctx context.Context, lab *bumpLab, upstreamAddr, serverName string, alpn []string,
) (string, <-chan bumpOutcome) {
	t.Helper()
	return startBumpOpts(t, ctx, lab, upstreamAddr, serverName, alpn, BumpOptions{})
}

// startBumpOpts is startBump with options for Bump.
func startBumpOpts(
	t *testing.T, ctx context.Context, lab *bumpLab, upstreamAddr, serverName string,
	alpn []string, opts BumpOptions,
) (string, <-chan bumpOutcome) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	out := make(chan bumpOutcome, 1)
	go func() {
		client, err := ln.Accept()
		if err != nil {
			out <- bumpOutcome{err: err}
			return
		}
		upstream, err := net.Dial("tcp", upstreamAddr)
		if err != nil {
			client.Close()
			out <- bumpOutcome{err: err}
			return
		}
		res, err := lab.bumper.Bump(ctx, client, upstream, serverName, alpn, opts)
		out <- bumpOutcome{res, err}
	}()
	return ln.Addr().String(), out
}

func waitBump(t *testing.T, out <-chan bumpOutcome) bumpOutcome {
	t.Helper()
	select {
	case o := <-out:
		return o
	case <-time.After(10 * time.Second):
		t.Fatal("Bump did not return")
		return bumpOutcome{}
	}
}

// clientConfig trusts only the gateway CA and records whether the client
// was ever shown a certificate.
func clientConfig(lab *bumpLab, serverName string, alpn []string, sawCert *bool) *tls.Config {
	return &tls.Config{
		RootCAs:    poolOf(lab.ca.Cert),
		ServerName: serverName,
		NextProtos: alpn,
		VerifyPeerCertificate: func([][]byte, [][]*x509.Certificate) error {
			*sawCert = true
			return nil
		},
	}
}

func dialClient(addr string, cfg *tls.Config) (*tls.Conn, error) {
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: cfg}
	conn, err := d.DialContext(context.Background(), "tcp", addr)
	if err != nil {
		return nil, err
	}
	return conn.(*tls.Conn), nil
}

// echoRoundTrip sends data, half-closes, and reads the echo until end of stream.
func echoRoundTrip(t *testing.T, conn *tls.Conn, data []byte) []byte {
	t.Helper()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	writeErr := make(chan error, 1)
	go func() {
		_, err := conn.Write(data)
		if err == nil {
			err = conn.CloseWrite()
		}
		writeErr <- err
	}()
	got, err := io.ReadAll(conn)
	if err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if err := <-writeErr; err != nil {
		t.Fatalf("write: %v", err)
	}
	return got
}

func TestBumpRelaysThroughForgedCertificate(t *testing.T) {
	tests := []struct {
		name, want string
		alpn       []string
	}{
		{"x-raw preferred", "x-raw", []string{"x-raw", "http/1.1"}},
		{"x-other only", "x-other", []string{"x-other"}},
		{"no alpn", "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lab := newBumpLab(t)
			upAddr, sni := startEchoServer(t, mustServerCert(t, lab.root, lab.rootKey, "up.test"))
			addr, out := startBump(t, context.Background(), lab, upAddr, "up.test", tt.alpn)

			var sawCert bool
			conn, err := dialClient(addr, clientConfig(lab, "up.test", tt.alpn, &sawCert))
			if err != nil {
				t.Fatalf("client handshake: %v", err)
			}
			defer conn.Close()
			state := conn.ConnectionState()
			issuer := state.PeerCertificates[0].Issuer.String()
			if issuer != lab.ca.Cert.Subject.String() {
				t.Errorf("peer certificate issuer %q, want the gateway CA", issuer)
			}
			if state.NegotiatedProtocol != tt.want {
				t.Errorf("client ALPN %q, want %q", state.NegotiatedProtocol, tt.want)
			}
			if got := (<-sni).ServerName; got != "up.test" {
				t.Errorf("upstream saw SNI %q", got)
			}

			data := make([]byte, 200_000)
			rand.Read(data)
			data[0] = 0 // binary from the first byte on, so never HTTP
			if got := echoRoundTrip(t, conn, data); !bytes.Equal(got, data) {
				t.Fatalf("echo returned %d bytes, want the %d sent", len(got), len(data))
			}

			o := waitBump(t, out)
			if o.err != nil {
				t.Fatalf("Bump: %v", o.err)
			}
			n := int64(len(data))
			want := BumpResult{BytesUp: n, BytesDown: n, ALPN: tt.want, Forged: true}
			if o.res != want {
				t.Errorf("result %+v, want %+v", o.res, want)
			}
		})
	}
}

// unverifiableUpstreams are upstream certificates for up.test that must
// fail verification, each for a different reason.
func unverifiableUpstreams(t *testing.T, lab *bumpLab) []struct {
	name string
	cert tls.Certificate
} {
	t.Helper()
	otherRoot, otherKey := mustRoot(t, "untrusted root")
	expired := mustServerCert(t, lab.root, lab.rootKey, "up.test")
	expired.Leaf = reissue(t, expired.Leaf, lab.root, lab.rootKey,
		time.Now().Add(-48*time.Hour), time.Now().Add(-time.Hour))
	expired.Certificate = [][]byte{expired.Leaf.Raw}
	return []struct {
		name string
		cert tls.Certificate
	}{
		{"untrusted root", mustServerCert(t, otherRoot, otherKey, "up.test")},
		{"name mismatch", mustServerCert(t, lab.root, lab.rootKey, "other.test")},
		{"expired", expired},
		{"self-signed", mustSelfSigned(t, "up.test")},
	}
}

// mustSelfSigned makes a leaf for name that signs itself.
func mustSelfSigned(t *testing.T, name string) tls.Certificate {
	t.Helper()
	key := mustKey(t)
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: name},
		DNSNames:    []string{name},
		NotBefore:   time.Now().Add(-time.Hour),
		NotAfter:    time.Now().Add(24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	leaf := mustSign(t, tmpl, nil, key.Public(), key)
	return tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf}
}

func TestBumpRefusesUnverifiedUpstream(t *testing.T) {
	lab := newBumpLab(t)
	for _, tt := range unverifiableUpstreams(t, lab) {
		t.Run(tt.name, func(t *testing.T) {
			upAddr, _ := startEchoServer(t, tt.cert)
			addr, out := startBump(t, context.Background(), lab, upAddr, "up.test", nil)

			var sawCert bool
			conn, err := dialClient(addr, clientConfig(lab, "up.test", nil, &sawCert))
			if err == nil {
				conn.Close()
				t.Fatal("client handshake succeeded")
			}
			assertRemoteAlert(t, err)
			if sawCert {
				t.Error("client was shown a certificate")
			}

			o := waitBump(t, out)
			t.Logf("Bump error: %v", o.err)
			if !errors.Is(o.err, ErrUpstreamVerify) {
				t.Fatalf("Bump error %v, want ErrUpstreamVerify", o.err)
			}
			for _, want := range []string{`"up.test"`, upAddr} {
				if !strings.Contains(o.err.Error(), want) {
					t.Errorf("error %q does not name %s", o.err, want)
				}
			}
			if o.res.Forged || lab.forger.Stats().Forged != 0 {
				t.Errorf("a certificate was forged: result %+v, stats %+v",
					o.res, lab.forger.Stats())
			}
		})
	}
}

func TestBumpUpstreamNotTLS(t *testing.T) {
	lab := newBumpLab(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		conn, err := ln.Accept()
		if err == nil {
			conn.Write([]byte("SSH-2.0-not-tls\r\n"))
			conn.Close()
		}
	}()
	addr, out := startBump(t, context.Background(), lab, ln.Addr().String(), "up.test", nil)

	var sawCert bool
	_, err = dialClient(addr, clientConfig(lab, "up.test", nil, &sawCert))
	assertRemoteAlert(t, err)

	o := waitBump(t, out)
	t.Logf("Bump error: %v", o.err)
	if o.err == nil || errors.Is(o.err, ErrUpstreamVerify) ||
		!strings.Contains(o.err.Error(), "upstream handshake") {
		t.Errorf("Bump error %v, want an upstream handshake failure", o.err)
	}
	if sawCert || lab.forger.Stats().Forged != 0 {
		t.Error("a certificate was forged or shown")
	}
}

func TestBumpWithoutSNI(t *testing.T) {
	lab := newBumpLab(t)
	upAddr, sni := startEchoServer(t, mustServerCert(t, lab.root, lab.rootKey, "127.0.0.1"))
	addr, out := startBump(t, context.Background(), lab, upAddr, "", nil)

	// An IP literal as ServerName makes crypto/tls send no SNI and verify
	// the IP SAN, as a client dialling an address would.
	var sawCert bool
	conn, err := dialClient(addr, clientConfig(lab, "127.0.0.1", nil, &sawCert))
	if err != nil {
		t.Fatalf("client handshake: %v", err)
	}
	defer conn.Close()
	if got := (<-sni).ServerName; got != "" {
		t.Errorf("upstream saw SNI %q, want none", got)
	}
	leaf := conn.ConnectionState().PeerCertificates[0]
	if len(leaf.IPAddresses) != 1 || !leaf.IPAddresses[0].Equal(net.IPv4(127, 0, 0, 1)) ||
		len(leaf.DNSNames) != 0 {
		t.Errorf("forged SANs: IP %v, DNS %v", leaf.IPAddresses, leaf.DNSNames)
	}
	if got := echoRoundTrip(t, conn, []byte("ping")); string(got) != "ping" {
		t.Errorf("echo %q", got)
	}
	if o := waitBump(t, out); o.err != nil || o.res.BytesUp != 4 || o.res.BytesDown != 4 {
		t.Errorf("Bump result %+v, error %v", o.res, o.err)
	}
}

func TestBumpWithoutSNIRejectsNameOnlyUpstream(t *testing.T) {
	lab := newBumpLab(t)
	upAddr, _ := startEchoServer(t, mustServerCert(t, lab.root, lab.rootKey, "up.test"))
	addr, out := startBump(t, context.Background(), lab, upAddr, "", nil)

	var sawCert bool
	_, err := dialClient(addr, clientConfig(lab, "127.0.0.1", nil, &sawCert))
	assertRemoteAlert(t, err)
	o := waitBump(t, out)
	if !errors.Is(o.err, ErrUpstreamVerify) || !strings.Contains(o.err.Error(), "(no sni)") {
		t.Errorf("Bump error %v, want ErrUpstreamVerify for (no sni)", o.err)
	}
	if sawCert || lab.forger.Stats().Forged != 0 {
		t.Error("a certificate was forged or shown")
	}
}

func TestBumpContextCancelEndsRelay(t *testing.T) {
	lab := newBumpLab(t)
	upAddr, _ := startEchoServer(t, mustServerCert(t, lab.root, lab.rootKey, "up.test"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr, out := startBump(t, ctx, lab, upAddr, "up.test", nil)

	var sawCert bool
	conn, err := dialClient(addr, clientConfig(lab, "up.test", nil, &sawCert))
	if err != nil {
		t.Fatalf("client handshake: %v", err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(conn, buf); err != nil {
		t.Fatalf("read echo: %v", err)
	}

	cancel()
	o := waitBump(t, out)
	if !errors.Is(o.err, context.Canceled) {
		t.Errorf("Bump error %v, want context.Canceled", o.err)
	}
	if o.res.BytesUp != 5 || o.res.BytesDown != 5 || !o.res.Forged {
		t.Errorf("result %+v, want 5 bytes each way", o.res)
	}
	if _, err := conn.Read(buf); err == nil {
		t.Error("client connection still open after cancel")
	}
}

// assertRemoteAlert checks that a client handshake failed because the peer
// sent a TLS alert, not because of a timeout or a reset.
func assertRemoteAlert(t *testing.T, err error) {
	t.Helper()
	var opErr *net.OpError
	if !errors.As(err, &opErr) || opErr.Op != "remote error" {
		t.Errorf("client error %v, want a TLS alert from the gateway", err)
	}
}

func TestBumpRejectsMalformedSNI(t *testing.T) {
	lab := newBumpLab(t)
	upAddr, sni := startEchoServer(t, mustServerCert(t, lab.root, lab.rootKey, "up.test"))
	addr, out := startBump(t, context.Background(), lab, upAddr, "up test", nil)

	var sawCert bool
	_, err := dialClient(addr, clientConfig(lab, "up.test", nil, &sawCert))
	assertRemoteAlert(t, err)
	o := waitBump(t, out)
	if o.err == nil || !strings.Contains(o.err.Error(), `server name "up test"`) {
		t.Errorf("Bump error %v, want one naming the malformed server name", o.err)
	}
	select {
	case got := <-sni:
		t.Errorf("upstream handshake attempted with SNI %q", got.ServerName)
	default:
	}
}

// A client resumes with the gateway on its next bumped connection, and a
// ticket from a verified connection does not let it skip the untrusted
// certificate of a mimicked one.
func TestBumpClientResumes(t *testing.T) {
	lab := newBumpLab(t)
	lab.bumper.cfg.VerifyFailure = VerifyMimic
	good, _ := startEchoServer(t, mustServerCert(t, lab.root, lab.rootKey, "up.test"))
	bad, _ := startEchoServer(t, mustSelfSigned(t, "up.test"))
	sessions := tls.NewLRUClientSessionCache(4)

	connect := func(upstream string) (*tls.Conn, error) {
		addr, _ := startBump(t, context.Background(), lab, upstream, "up.test", nil)
		var sawCert bool
		cfg := clientConfig(lab, "up.test", nil, &sawCert)
		cfg.ClientSessionCache = sessions
		return dialClient(addr, cfg)
	}
	for i, wantResumed := range []bool{false, true, true} {
		conn, err := connect(good)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		if got := conn.ConnectionState().DidResume; got != wantResumed {
			t.Errorf("connection %d resumed = %v, want %v", i, got, wantResumed)
		}
		// Reading the echo also reads the ticket the gateway sent.
		if got := echoRoundTrip(t, conn, []byte{0, 1, 2}); len(got) != 3 {
			t.Errorf("connection %d echoed %d bytes, want 3", i, len(got))
		}
		conn.Close()
	}

	conn, err := connect(bad)
	if err == nil {
		conn.Close()
		t.Fatalf("client resumed past a mimicked certificate (resumed %v)",
			conn.ConnectionState().DidResume)
	}
	var unknown x509.UnknownAuthorityError
	if !errors.As(err, &unknown) {
		t.Errorf("client error %v, want the untrusted certificate", err)
	}
}

// Ticket keys rotate: a new key encrypts, older ones still decrypt for a
// while, and the oldest drop out.
func TestTicketKeysRotate(t *testing.T) {
	var k ticketKeys
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	first, err := k.at(t0)
	if err != nil || len(first) != 1 {
		t.Fatalf("first keys %d, %v", len(first), err)
	}
	if same, _ := k.at(t0.Add(ticketKeyRotation - time.Second)); &same[0] != &first[0] {
		t.Error("keys changed before the rotation time")
	}
	var keys [][32]byte
	for i := 1; i <= ticketKeysKept+1; i++ {
		keys, _ = k.at(t0.Add(time.Duration(i) * ticketKeyRotation))
		if want := min(i+1, ticketKeysKept); len(keys) != want {
			t.Fatalf("after %d rotations %d keys, want %d", i, len(keys), want)
		}
	}
	for _, key := range keys {
		if key == first[0] {
			t.Error("the first key still decrypts after more than the kept rotations")
		}
	}
	if keys[0] == keys[1] {
		t.Error("rotation repeated a key")
	}
	// A clock stepped back starts a new key rather than keep one forever.
	back, _ := k.at(t0)
	if back[0] == keys[0] {
		t.Error("keys unchanged after the clock went back")
	}
}

// The key exchange setting decides the groups of both legs: the one the
// client gets, and the ones offered upstream.
func TestBumpKeyExchange(t *testing.T) {
	tests := []struct {
		kx             KeyExchange
		wantClient     tls.CurveID
		upstreamHybrid bool
	}{
		{KeyExchangeHybrid, tls.X25519MLKEM768, true},
		{KeyExchangeClassic, tls.X25519, false},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.kx), func(t *testing.T) {
			lab := newBumpLab(t)
			lab.bumper.cfg.KeyExchange = tt.kx
			upAddr, hellos := startEchoServer(t, mustServerCert(t, lab.root, lab.rootKey, "up.test"))
			addr, _ := startBump(t, context.Background(), lab, upAddr, "up.test", nil)

			var sawCert bool
			// Go's client offers X25519MLKEM768 and X25519 key shares.
			conn, err := dialClient(addr, clientConfig(lab, "up.test", nil, &sawCert))
			if err != nil {
				t.Fatalf("client handshake: %v", err)
			}
			defer conn.Close()
			if got := conn.ConnectionState().CurveID; got != tt.wantClient {
				t.Errorf("client leg key exchange %v, want %v", got, tt.wantClient)
			}
			if got := slices.Contains((<-hellos).SupportedCurves, tls.X25519MLKEM768); got != tt.upstreamHybrid {
				t.Errorf("upstream offered X25519MLKEM768: %v, want %v", got, tt.upstreamHybrid)
			}
		})
	}
}
