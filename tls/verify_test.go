package tls

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"slices"
	"sync"
	"testing"
	"time"
)

func TestBumpMimicsUnverifiedUpstream(t *testing.T) {
	lab := newBumpLab(t)
	lab.bumper = NewBumper(BumpConfig{
		Forger:           lab.forger,
		Roots:            poolOf(lab.root),
		HandshakeTimeout: 5 * time.Second,
		VerifyFailure:    VerifyMimic,
	})
	for _, tt := range unverifiableUpstreams(t, lab) {
		t.Run(tt.name, func(t *testing.T) {
			upAddr, _ := startEchoServer(t, tt.cert)
			addr, out := startBump(t, context.Background(), lab, upAddr, "up.test", nil)

			var sawCert bool
			_, err := dialClient(addr, clientConfig(lab, "up.test", nil, &sawCert))
			var verr *tls.CertificateVerificationError
			if !errors.As(err, &verr) {
				t.Fatalf("client error %v, want a certificate verification error", err)
			}
			leaf := verr.UnverifiedCertificates[0]
			if leaf.Issuer.CommonName != "snigate untrusted" ||
				leaf.Issuer.String() == lab.ca.Cert.Subject.String() {
				t.Errorf("client shown a leaf issued by %q, want snigate untrusted", leaf.Issuer)
			}
			opts := x509.VerifyOptions{Roots: poolOf(lab.ca.Cert), DNSName: "up.test"}
			if _, err := leaf.Verify(opts); err == nil {
				t.Error("the mimicked leaf verifies against the gateway CA")
			}

			o := waitBump(t, out)
			if !errors.Is(o.err, ErrUpstreamVerify) {
				t.Fatalf("Bump error %v, want ErrUpstreamVerify", o.err)
			}
			if !o.res.Mimicked || o.res.Forged {
				t.Errorf("result %+v, want mimicked and not forged", o.res)
			}
			if s := lab.forger.Stats(); s.Forged != 0 || s.Untrusted == 0 {
				t.Errorf("stats %+v: want untrusted certificates only", s)
			}
		})
	}
}

// TestBumpMimicClosesAfterHandshake checks that a client accepting the
// untrusted certificate anyway gets a closed connection, not the upstream.
func TestBumpMimicClosesAfterHandshake(t *testing.T) {
	lab := newBumpLab(t)
	lab.bumper = NewBumper(BumpConfig{Forger: lab.forger, VerifyFailure: VerifyMimic})
	upAddr, _ := startEchoServer(t, mustSelfSigned(t, "up.test"))
	addr, out := startBump(t, context.Background(), lab, upAddr, "up.test", nil)

	cfg := &tls.Config{ServerName: "up.test", InsecureSkipVerify: true}
	conn, err := dialClient(addr, cfg)
	if err != nil {
		t.Fatalf("client handshake: %v", err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	conn.Write([]byte("ping"))
	if n, err := conn.Read(make([]byte, 4)); err == nil {
		t.Errorf("read %d bytes after the mimicked handshake, want the connection closed", n)
	}
	if o := waitBump(t, out); !errors.Is(o.err, ErrUpstreamVerify) || !o.res.Mimicked {
		t.Errorf("Bump result %+v, error %v", o.res, o.err)
	}
}

func TestParseVerifyFailureMode(t *testing.T) {
	for _, m := range []VerifyFailureMode{VerifyReject, VerifyMimic} {
		got, err := ParseVerifyFailureMode(m.String())
		if err != nil || got != m {
			t.Errorf("ParseVerifyFailureMode(%q) = %v, %v", m, got, err)
		}
	}
	if _, err := ParseVerifyFailureMode("Mimic"); err == nil {
		t.Error(`"Mimic" accepted`)
	}
}

func TestBumpForgesKeyTypeClientSupports(t *testing.T) {
	lab := newBumpLab(t)
	up := mustServerCert(t, lab.root, lab.rootKey, "up.test", "www.up.test", "198.19.1.2")
	upAddr, _ := startEchoServer(t, up)
	rsaOnly := func(cfg *tls.Config) {
		// A TLS 1.2 client offering only RSA-authenticated suites cannot
		// take an ECDSA certificate.
		cfg.MaxVersion = tls.VersionTLS12
		cfg.CipherSuites = []uint16{
			tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305,
		}
	}
	tests := []struct {
		name   string
		config func(*tls.Config)
		want   x509.PublicKeyAlgorithm
	}{
		{"default client", func(*tls.Config) {}, x509.ECDSA},
		{"rsa-only client", rsaOnly, x509.RSA},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr, out := startBump(t, context.Background(), lab, upAddr, "up.test", nil)
			var sawCert bool
			cfg := clientConfig(lab, "up.test", nil, &sawCert)
			tt.config(cfg)
			conn, err := dialClient(addr, cfg)
			if err != nil {
				t.Fatalf("client handshake: %v", err)
			}
			defer conn.Close()

			leaf := conn.ConnectionState().PeerCertificates[0]
			if leaf.PublicKeyAlgorithm != tt.want {
				t.Errorf("leaf key %v, want %v", leaf.PublicKeyAlgorithm, tt.want)
			}
			if !slices.Equal(leaf.DNSNames, up.Leaf.DNSNames) ||
				!slices.EqualFunc(leaf.IPAddresses, up.Leaf.IPAddresses, net.IP.Equal) ||
				leaf.Subject.CommonName != "up.test" {
				t.Errorf("leaf names CN %q, DNS %v, IP %v; want the upstream's",
					leaf.Subject.CommonName, leaf.DNSNames, leaf.IPAddresses)
			}
			if got := echoRoundTrip(t, conn, []byte{0, 1, 2}); len(got) != 3 {
				t.Errorf("echo %q", got)
			}
			if o := waitBump(t, out); o.err != nil {
				t.Errorf("Bump: %v", o.err)
			}
		})
	}
}

// BenchmarkBumpHandshake measures bumping a new connection with a warm
// certificate cache: both handshakes, a 4-byte raw echo, and the close.
func BenchmarkBumpHandshake(b *testing.B) {
	lab := newBumpLab(b)
	upAddr, sni := startEchoServer(b, mustServerCert(b, lab.root, lab.rootKey, "up.test"))
	go func() {
		for range sni { // startEchoServer's channel must not fill up
		}
	}()
	var conns sync.WaitGroup
	addr := serveBumps(b, lab, upAddr, "up.test", []string{"x-raw"}, &conns)
	cfg := &tls.Config{
		RootCAs:    poolOf(lab.ca.Cert),
		ServerName: "up.test",
		NextProtos: []string{"x-raw"},
	}
	benchBump(b, addr, cfg) // warms the cache

	b.ReportAllocs()
	for b.Loop() {
		benchBump(b, addr, cfg)
	}
	b.StopTimer()
	// The client takes ECDSA, so only that leaf is forged, once.
	if s := lab.forger.Stats(); s.Forged != 1 {
		b.Errorf("stats %+v, want 1 forged and hits after", s)
	}
}

func benchBump(b *testing.B, addr string, cfg *tls.Config) {
	conn, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("ping")); err != nil {
		b.Fatal(err)
	}
	if _, err := io.ReadFull(conn, make([]byte, 4)); err != nil {
		b.Fatal(err)
	}
}
