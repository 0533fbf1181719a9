package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

const headerPolicy = `policy:
  rules:
    - sni: [tunnel.cloudproxy.app, "*.tunnel.cloudproxy.app", "*.mtls.googleapis.com"]
      action: splice
    - sni: [www.example.test, "*.example.test"]
      action: bump
      add_request_headers:
        X-GoogApps-Allowed-Domains: example.com
  no_sni: splice
  default: bump
`

// curlHeaders fetches /headers of www.example.test through the bump with
// curl forcing one HTTP version, and returns the headers the lab server saw
// and curl's verbose output.
func curlHeaders(t *testing.T, version string) (map[string][]string, string) {
	t.Helper()
	out, errOut, err := inClient(t, "curl", "-sS", "-v", version, "--cacert", lab.gwCA,
		"-H", "X-GoogApps-Allowed-Domains: evil.example",
		"--resolve", "www.example.test:443:"+webV4, "https://www.example.test/headers?q=1")
	if err != nil {
		t.Fatalf("curl %s: %v\n%s", version, err, errOut)
	}
	var h map[string][]string
	if err := json.Unmarshal([]byte(out), &h); err != nil {
		t.Fatalf("curl %s: %v in %q", version, err, out)
	}
	return h, errOut
}

// HTTP/2 and HTTP/1.1 both pass through the bump, the rule's header reaches
// the server on every request (replacing the client's own value), and the
// access log has one line per request.
func TestBumpHTTPVersionsAndHeaders(t *testing.T) {
	d := startDaemon(t, "auto", headerPolicy)
	for _, tt := range []struct{ flag, proto, alpn string }{
		{"--http2", "HTTP/2.0", "h2"},
		{"--http1.1", "HTTP/1.1", "http/1.1"},
	} {
		t.Run(tt.flag, func(t *testing.T) {
			h, verbose := curlHeaders(t, tt.flag)
			if got := h["X-Googapps-Allowed-Domains"]; len(got) != 1 || got[0] != "example.com" {
				t.Errorf("server saw X-GoogApps-Allowed-Domains %q, want [example.com]", got)
			}
			if !strings.Contains(verbose, "ALPN: server accepted "+tt.alpn) &&
				!strings.Contains(verbose, "ALPN, server accepted to use "+tt.alpn) {
				t.Errorf("curl did not negotiate %s through the bump:\n%s", tt.alpn, verbose)
			}
			d.waitAccessLog(t, map[string]string{"path": "/headers", "proto": tt.proto,
				"status": "200", "host": "www.example.test"})
		})
	}
	// The header follows the request's Host, not the SNI the connection
	// was opened with (as when a browser reuses a connection).
	t.Run("host differs from sni", func(t *testing.T) {
		out, errOut, err := inClient(t, "curl", "-sS", "--cacert", lab.gwCA,
			"-H", "Host: www.example.test", "--resolve", "example.test:443:"+webV4,
			"https://example.test/headers")
		if err != nil {
			t.Fatalf("curl: %v\n%s", err, errOut)
		}
		if !strings.Contains(out, `"X-Googapps-Allowed-Domains":["example.com"]`) {
			t.Errorf("request for Host www.example.test over SNI example.test lacks "+
				"the header: %s", out)
		}
	})
	t.Run("websocket", func(t *testing.T) {
		wsEcho(t, clientHTTP(webV4, lab.gwRoot), "wss://www.example.test/ws")
		d.waitAccessLog(t, map[string]string{"path": "/ws", "websocket": "true",
			"status": "101"})
	})
}

// waitAccessLog waits for an access-log line of the bump path.
func (d *daemon) waitAccessLog(t *testing.T, want map[string]string) {
	t.Helper()
	want["msg"] = "request"
	want["logger"] = "http"
	d.waitFor(t, want)
}

// Upstreams whose certificate fails verification: by default the client's
// handshake is aborted with an alert; in mimic mode the client is shown a
// certificate from an untrusted issuer, never the gateway CA.
func TestBumpVerifyFailures(t *testing.T) {
	cases := []struct{ name, host, ip string }{
		{"untrusted root", "bad.example.test", badV4},
		{"expired", "expired.example.test", badV4},
		{"self-signed", "selfsigned.example.test", badV4},
		{"name mismatch", "mismatch.example.test", webV4},
	}
	t.Run("reject", func(t *testing.T) {
		d := startDaemon(t, "auto", "")
		for _, c := range cases {
			_, errOut, err := inClient(t, "curl", "-sS", "--cacert", lab.gwCA,
				"--resolve", c.host+":443:"+c.ip, "https://"+c.host+"/")
			var ee *exec.ExitError
			if !asExit(err, &ee) || ee.ExitCode() != 35 {
				t.Errorf("%s: curl %v, want exit 35 (handshake aborted):\n%s", c.name, err, errOut)
			}
			line := d.connLog(t, map[string]string{"sni": c.host, "action": "bump"})
			if e, _ := line["error"].(string); !strings.Contains(e, "verification failed") {
				t.Errorf("%s: log error %q does not say verification failed", c.name, e)
			}
		}
	})
	t.Run("mimic", func(t *testing.T) {
		startDaemon(t, "auto", "upstream:\n  roots: ["+filepath.Join(lab.labDir, "root.crt")+
			"]\n  verify_failure: mimic\n"+defaultPolicy)
		for _, c := range cases {
			out, _, _ := inClient(t, "openssl", "s_client", "-connect", c.ip+":443",
				"-servername", c.host, "-CAfile", lab.gwCA, "-verify_return_error")
			if !strings.Contains(out, "snigate untrusted") {
				t.Errorf("%s: mimic mode did not show the untrusted issuer:\n%s", c.name, out)
			}
			if strings.Contains(out, "Verify return code: 0 (ok)") {
				t.Errorf("%s: the mimicked certificate verified against the gateway CA", c.name)
			}
		}
	})
}

// leafOf connects through the gateway to ip:443 with SNI name, trusting the
// gateway CA, and returns the certificate the client was shown.
func leafOf(t *testing.T, ip, name string) *x509.Certificate {
	t.Helper()
	raw, err := clientDial(context.Background(), "tcp", hostIP(ip, "443"))
	if err != nil {
		t.Fatal(err)
	}
	c := tls.Client(raw, &tls.Config{ServerName: name, RootCAs: lab.gwRoot})
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if err := c.Handshake(); err != nil {
		t.Fatalf("handshake with %s through the bump: %v", name, err)
	}
	return c.ConnectionState().PeerCertificates[0]
}

// An upstream that changes its certificate gets a new forgery: the cache is
// keyed on the upstream certificate, and the forgery stays inside the new
// certificate's validity.
func TestBumpUpstreamCertificateChange(t *testing.T) {
	const ip, name = "198.19.1.6", "rotate.example.test"
	root, err := tls.LoadX509KeyPair(filepath.Join(lab.labDir, "root.crt"),
		filepath.Join(lab.labDir, "root.key"))
	if err != nil {
		t.Fatal(err)
	}
	rootCert, _ := x509.ParseCertificate(root.Certificate[0])
	issue := func(validFor time.Duration) *tls.Certificate {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
		tmpl := &x509.Certificate{SerialNumber: serial, DNSNames: []string{name},
			Subject:   pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(validFor),
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, rootCert, &key.PublicKey,
			root.PrivateKey)
		if err != nil {
			t.Fatal(err)
		}
		return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	}
	var current atomic.Pointer[tls.Certificate]
	current.Store(issue(10 * 24 * time.Hour))
	serveTLSInServers(t, ip, func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		return current.Load(), nil
	})

	d := startDaemon(t, "auto", "")
	first := leafOf(t, ip, name)
	again := leafOf(t, ip, name)
	if first.SerialNumber.Cmp(again.SerialNumber) != 0 {
		t.Errorf("an unchanged upstream got a new forgery")
	}
	next := issue(5 * 24 * time.Hour)
	current.Store(next)
	nextLeaf, _ := x509.ParseCertificate(next.Certificate[0])
	changed := leafOf(t, ip, name)
	if changed.SerialNumber.Cmp(first.SerialNumber) == 0 {
		t.Errorf("a changed upstream certificate kept the old forgery")
	}
	if changed.NotAfter.After(nextLeaf.NotAfter) {
		t.Errorf("forgery valid until %v, past the upstream's %v", changed.NotAfter,
			nextLeaf.NotAfter)
	}
	d.connLog(t, map[string]string{"sni": name, "action": "bump"})
}

// serveTLSInServers adds ip to the servers' namespace and serves TLS on
// ip:443 there with certificates from getCert, answering each connection
// with one line.
func serveTLSInServers(t *testing.T, ip string,
	getCert func(*tls.ClientHelloInfo) (*tls.Certificate, error)) {
	t.Helper()
	var l net.Listener
	err := inNS(labPrefix+"-srv", func() error {
		eth, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		addr, _ := netlink.ParseAddr(ip + "/24")
		if err := netlink.AddrReplace(eth, addr); err != nil {
			return fmt.Errorf("add %s: %w", ip, err)
		}
		t.Cleanup(func() { inNS(labPrefix+"-srv", func() error { return netlink.AddrDel(eth, addr) }) })
		l, err = net.Listen("tcp", hostIP(ip, "443"))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				tc := tls.Server(c, &tls.Config{GetCertificate: getCert})
				tc.SetDeadline(time.Now().Add(10 * time.Second))
				if tc.Handshake() == nil {
					io.WriteString(tc, "ok\n")
				}
			}()
		}
	}()
}

// Names as clients send them: openssl passes the server name verbatim, so a
// mixed-case name with a trailing dot reaches the gateway as written, and it
// must still match the splice rule for tunnel.cloudproxy.app. (The lab
// server, Go's crypto/tls, then refuses the trailing dot with a decode_error
// alert; that answer coming back through the splice is the real server's.)
func TestServerNameAsSent(t *testing.T) {
	d := startDaemon(t, "auto", "")
	out, errOut, _ := inClient(t, "openssl", "s_client", "-connect", hostIP(tunnelV4, "443"),
		"-servername", "TUNNEL.CloudProxy.app.", "-CAfile", filepath.Join(lab.labDir, "root.crt"))
	if !strings.Contains(out+errOut, "alert decode error") {
		t.Errorf("openssl did not get the real server's answer:\n%s%s", out, errOut)
	}
	line := d.connLog(t, map[string]string{"sni": "tunnel.cloudproxy.app",
		"action": "splice", "rule": "0"})
	if down, _ := line["bytes_down"].(float64); down == 0 {
		t.Errorf("nothing came back through the splice: %v", line)
	}
}

// A client that connects by IP without SNI, when the policy bumps such
// connections, gets a forged certificate for that IP.
func TestBumpWithoutSNI(t *testing.T) {
	d := startDaemon(t, "auto", "policy:\n  no_sni: bump\n  default: bump\n")
	out, _, err := inClient(t, "openssl", "s_client", "-connect", hostIP(webV4, "443"),
		"-noservername", "-CAfile", lab.gwCA, "-verify_ip", webV4, "-verify_return_error")
	if err != nil || !strings.Contains(out, "Verify return code: 0 (ok)") {
		t.Errorf("no verified forgery for %s: %v\n%s", webV4, err, out)
	}
	d.connLog(t, map[string]string{"hello": "no_sni", "action": "bump"})
}
