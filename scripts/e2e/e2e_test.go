package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/coder/websocket"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// whoami is what the lab servers answer on /whoami.
type whoami struct {
	Remote string `json:"remote"`
	SNI    string `json:"sni"`
	Proto  string `json:"proto"`
}

// clientHTTP returns an HTTP client in the client namespace that connects to
// ip:port whatever the URL's host, trusting only roots.
func clientHTTP(ip string, roots *x509.CertPool) *http.Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			_, port, _ := net.SplitHostPort(addr)
			return clientDial(ctx, "tcp", net.JoinHostPort(ip, port))
		},
		TLSClientConfig:   &tls.Config{RootCAs: roots},
		DisableKeepAlives: true,
	}
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// getWhoami fetches /whoami from url through ip and returns the answer and
// the issuer of the certificate the client saw.
func getWhoami(t *testing.T, c *http.Client, url string) (whoami, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: status %d: %s", url, resp.StatusCode, body)
	}
	var w whoami
	if err := json.Unmarshal(body, &w); err != nil {
		t.Fatalf("GET %s: %v in %q", url, err, body)
	}
	issuer := ""
	if resp.TLS != nil && len(resp.TLS.PeerCertificates) > 0 {
		issuer = resp.TLS.PeerCertificates[0].Issuer.CommonName
	}
	return w, issuer
}

// wsEcho opens a WebSocket to url through ip and checks that messages come
// back unchanged.
func wsEcho(t *testing.T, c *http.Client, url string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPClient: c})
	if err != nil {
		t.Fatalf("websocket dial %s: %v", url, err)
	}
	defer ws.CloseNow()
	for i := range 3 {
		msg := fmt.Sprintf("echo %d through snigate", i)
		if err := ws.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			t.Fatalf("websocket write: %v", err)
		}
		_, got, err := ws.Read(ctx)
		if err != nil {
			t.Fatalf("websocket read: %v", err)
		}
		if string(got) != msg {
			t.Fatalf("websocket echo = %q, want %q", got, msg)
		}
	}
	ws.Close(websocket.StatusNormalClosure, "done")
}

func hostIP(ip, port string) string { return net.JoinHostPort(ip, port) }

func TestGateway(t *testing.T) {
	for _, mode := range []string{"tcx", "legacy"} {
		t.Run(mode, func(t *testing.T) {
			d := startDaemon(t, mode, "")
			t.Run("splice websocket to tunnel.cloudproxy.app", func(t *testing.T) {
				testSpliceWebSocket(t, d, tunnelV4, gwWANV4)
			})
			t.Run("bump https get and websocket", func(t *testing.T) {
				testBump(t, d, webV4, gwWANV4)
			})
			t.Run("ipv6 splice", func(t *testing.T) { testSpliceWebSocket(t, d, tunnelV6, gwWANV6) })
			t.Run("ipv6 bump", func(t *testing.T) { testBump(t, d, webV6, gwWANV6) })
			t.Run("hello in one-byte writes", func(t *testing.T) { testSmallWrites(t, d) })
			t.Run("curl bump", func(t *testing.T) { testCurlBump(t, d) })
			t.Run("openssl without sni", func(t *testing.T) { testNoSNI(t, d) })
			t.Run("upstream certificate fails verification", func(t *testing.T) {
				testBadUpstream(t, d)
			})
			t.Run("other port forwarded untouched", func(t *testing.T) { testOtherPort(t) })
			t.Run("destination is the gateway", func(t *testing.T) { testGatewayItself(t, d) })

			d.stop(t)
			assertNothingLeft(t)
		})
	}
}

func testSpliceWebSocket(t *testing.T, d *daemon, ip, gwIP string) {
	c := clientHTTP(ip, lab.labRoot)
	w, issuer := getWhoami(t, c, "https://tunnel.cloudproxy.app/whoami")
	if host, _, _ := net.SplitHostPort(w.Remote); host != gwIP {
		t.Errorf("server saw the connection from %s, want the gateway %s", w.Remote, gwIP)
	}
	if issuer == "snigate gateway CA" {
		t.Errorf("spliced connection shows the gateway CA")
	}
	wsEcho(t, c, "wss://tunnel.cloudproxy.app/ws")
	d.connLog(t, map[string]string{"sni": "tunnel.cloudproxy.app", "action": "splice",
		"dst": hostIP(ip, "443")})
}

func testBump(t *testing.T, d *daemon, ip, gwIP string) {
	c := clientHTTP(ip, lab.gwRoot)
	w, issuer := getWhoami(t, c, "https://www.example.test/whoami")
	if issuer != "snigate gateway CA" {
		t.Errorf("bumped connection shows issuer %q, want the gateway CA", issuer)
	}
	if host, _, _ := net.SplitHostPort(w.Remote); host != gwIP {
		t.Errorf("server saw %s, want the gateway %s", w.Remote, gwIP)
	}
	if w.SNI != "www.example.test" {
		t.Errorf("upstream saw SNI %q, want www.example.test", w.SNI)
	}
	wsEcho(t, c, "wss://www.example.test/ws")
	d.connLog(t, map[string]string{"sni": "www.example.test", "action": "bump",
		"dst": hostIP(ip, "443")})
}

// byteConn writes the first limit bytes one byte per segment.
type byteConn struct {
	net.Conn
	limit int
}

func (b *byteConn) Write(p []byte) (int, error) {
	n := 0
	for n < len(p) && b.limit > 0 {
		if _, err := b.Conn.Write(p[n : n+1]); err != nil {
			return n, err
		}
		n++
		b.limit--
		time.Sleep(200 * time.Microsecond)
	}
	m, err := b.Conn.Write(p[n:])
	return n + m, err
}

func testSmallWrites(t *testing.T, d *daemon) {
	raw, err := clientDial(context.Background(), "tcp", hostIP(tunnelV4, "443"))
	if err != nil {
		t.Fatal(err)
	}
	raw.(*net.TCPConn).SetNoDelay(true)
	c := tls.Client(&byteConn{Conn: raw, limit: 4096}, &tls.Config{
		ServerName: "TUNNEL.CloudProxy.app.", RootCAs: lab.labRoot,
		NextProtos: []string{"http/1.1"},
	})
	defer c.Close()
	c.SetDeadline(time.Now().Add(15 * time.Second))
	// The trailing dot and case are the client's; verification uses the
	// name without them, which the lab certificate carries.
	if err := c.Handshake(); err != nil {
		t.Fatalf("handshake through one-byte writes: %v", err)
	}
	fmt.Fprintf(c, "GET /whoami HTTP/1.1\r\nHost: tunnel.cloudproxy.app\r\nConnection: close\r\n\r\n")
	body, _ := io.ReadAll(c)
	if !strings.Contains(string(body), `"remote"`) {
		t.Fatalf("no whoami answer: %q", body)
	}
	d.connLog(t, map[string]string{"sni": "tunnel.cloudproxy.app", "action": "splice",
		"rule": "0"})
}

func testCurlBump(t *testing.T, d *daemon) {
	out, errOut, err := inClient(t, "curl", "-sS", "-v", "--cacert", lab.gwCA,
		"--resolve", "www.example.test:443:"+webV4, "https://www.example.test/")
	if err != nil {
		t.Fatalf("curl: %v\n%s", err, errOut)
	}
	if !strings.Contains(out, "www.example.test") {
		t.Errorf("curl body %q does not come from www.example.test", out)
	}
	if !strings.Contains(errOut, "snigate gateway CA") {
		t.Errorf("curl -v does not show the gateway CA as issuer:\n%s", errOut)
	}
}

func testNoSNI(t *testing.T, d *daemon) {
	out, errOut, err := inClient(t, "openssl", "s_client", "-connect", hostIP(tunnelV4, "443"),
		"-noservername", "-CAfile", lab.labDir+"/root.crt", "-verify_ip", tunnelV4,
		"-verify_return_error", "-brief")
	if err != nil {
		t.Fatalf("openssl s_client: %v\n%s%s", err, out, errOut)
	}
	if !strings.Contains(out+errOut, "Verification: OK") {
		t.Errorf("openssl did not verify the real server certificate:\n%s%s", out, errOut)
	}
	d.connLog(t, map[string]string{"hello": "no_sni", "action": "splice",
		"dst": hostIP(tunnelV4, "443")})
}

func testBadUpstream(t *testing.T, d *daemon) {
	_, errOut, err := inClient(t, "curl", "-sS", "--cacert", lab.gwCA,
		"--resolve", "bad.example.test:443:"+badV4, "https://bad.example.test/")
	if err == nil {
		t.Fatalf("curl to a host with an untrusted certificate succeeded through the bump")
	}
	var ee *exec.ExitError
	// 35: the TLS handshake failed, which is the alert snigate sends. 60
	// would mean a certificate was presented and rejected by curl.
	if ok := asExit(err, &ee); !ok || ee.ExitCode() != 35 {
		t.Errorf("curl exit %v, want 35 (handshake aborted):\n%s", err, errOut)
	}
	line := d.connLog(t, map[string]string{"sni": "bad.example.test", "action": "bump"})
	if e, _ := line["error"].(string); !strings.Contains(e, "certificate") {
		t.Errorf("log error %q does not name the certificate failure", e)
	}
}

func asExit(err error, ee **exec.ExitError) bool {
	e, ok := err.(*exec.ExitError)
	*ee = e
	return ok
}

func testOtherPort(t *testing.T) {
	c := clientHTTP(webV4, lab.labRoot)
	w, _ := getWhoami(t, c, "https://www.example.test:8443/whoami")
	if host, _, _ := net.SplitHostPort(w.Remote); host != clientV4 {
		t.Errorf("port 8443 reached the server from %s, want the client %s directly",
			w.Remote, clientV4)
	}
}

// testGatewayItself runs a service on the gateway's own LAN address and
// port 443: the steering must leave it alone, so the client talks to that
// service and not to the dataplane.
func testGatewayItself(t *testing.T, d *daemon) {
	var l net.Listener
	err := inNS(nsGateway, func() error {
		var err error
		l, err = net.Listen("tcp", "198.18.1.1:443")
		return err
	})
	if err != nil {
		t.Fatalf("listen on the gateway: %v", err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err == nil {
			io.WriteString(c, "gateway-local\n")
			c.Close()
		}
	}()

	c, err := clientDial(context.Background(), "tcp", "198.18.1.1:443")
	if err != nil {
		t.Fatalf("dial the gateway: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(c)
	if string(got) != "gateway-local\n" {
		t.Fatalf("the gateway's own service answered %q (%v), want gateway-local", got, err)
	}
	d.noConnLog(t, "198.18.1.1:443")
}

// assertNothingLeft checks the gateway namespace after a clean stop: no
// policy rule, no route in the steering table, no program on lan0.
func assertNothingLeft(t *testing.T) {
	t.Helper()
	err := inNS(nsGateway, func() error {
		rules, err := netlink.RuleList(netlink.FAMILY_ALL)
		if err != nil {
			return err
		}
		for _, r := range rules {
			if r.Table == 5443 {
				t.Errorf("rule left behind: %v", r)
			}
		}
		routes, err := netlink.RouteListFiltered(netlink.FAMILY_ALL,
			&netlink.Route{Table: 5443}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return err
		}
		for _, r := range routes {
			t.Errorf("route left behind in table 5443: %v", r)
		}
		lan, err := netlink.LinkByName("lan0")
		if err != nil {
			return err
		}
		res, err := link.QueryPrograms(link.QueryOptions{
			Target: lan.Attrs().Index, Attach: ebpf.AttachTCXIngress})
		if err != nil {
			return err
		}
		if len(res.Programs) > 0 {
			t.Errorf("%d tcx programs left on lan0", len(res.Programs))
		}
		qdiscs, err := netlink.QdiscList(lan)
		if err != nil {
			return err
		}
		for _, q := range qdiscs {
			if q.Type() == "clsact" {
				t.Errorf("clsact qdisc left on lan0")
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// After snigate stops (or is killed and cleaned up), a client that reuses
// the source port of an intercepted connection connects at once. The
// gateway closed that connection first (the server did, and the relay
// passed it on), so a TIME_WAIT socket with the flow's addresses stayed in
// the gateway; left there, it makes forwarding drop the client's packets
// for up to a minute.
func TestStopReleasesTimeWait(t *testing.T) {
	tests := []struct {
		name           string
		kill           bool
		server, client string
		gateway        string // the address the server sees through snigate
	}{
		{"stop", false, tunnelV4, clientV4, gwWANV4},
		{"kill and cleanup", true, tunnelV4, clientV4, gwWANV4},
		{"stop, IPv6", false, tunnelV6, clientV6, gwWANV6},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := startDaemon(t, "auto", "")
			// Who closes first is a race between the server's close and
			// curl's; only when the gateway did is there a TIME_WAIT.
			var port string
			for try := range 10 {
				p := fmt.Sprint(42000 + 10*i + try)
				if remote := curlWhoamiFrom(t, tt.server, p); remote != tt.gateway {
					t.Fatalf("through snigate the server saw %s, want the gateway", remote)
				}
				time.Sleep(50 * time.Millisecond)
				if timeWaitOn443(t, tt.server, net.JoinHostPort(tt.client, p)) > 0 {
					port = p
					break
				}
			}
			if port == "" {
				t.Fatal("no TIME_WAIT socket for 10 intercepted connections; the test proves nothing")
			}
			if tt.kill {
				d.kill(t)
				if out, err := snigateCmd(t, d, "cleanup", "--config", d.cfgPath); err != nil {
					t.Fatalf("snigate cleanup: %v\n%s", err, out)
				}
			} else {
				d.stop(t)
			}
			if n := timeWaitOn443(t, tt.server, tt.client); n != 0 {
				t.Errorf("%d TIME_WAIT sockets of intercepted flows left after %s", n, tt.name)
			}
			if remote := curlWhoamiFrom(t, tt.server, port); remote != tt.client {
				t.Errorf("after %s the server saw %s, want the client %s directly",
					tt.name, remote, tt.client)
			}
		})
	}
}

// curlWhoamiFrom fetches whoami from the spliced host at server over
// HTTP/1.1 with Connection: close, from the client's source port, and
// returns the address the server saw.
func curlWhoamiFrom(t *testing.T, server, port string) string {
	t.Helper()
	out, errOut, err := inClient(t, "curl", "-sS", "--http1.1", "-H", "Connection: close",
		"--connect-timeout", "3", "--local-port", port,
		"--cacert", filepath.Join(lab.labDir, "root.crt"),
		"--resolve", "tunnel.cloudproxy.app:443:"+server, "https://tunnel.cloudproxy.app/whoami")
	if err != nil {
		t.Fatalf("curl from port %s: %v\n%s", port, err, errOut)
	}
	var w whoami
	if err := json.Unmarshal([]byte(out), &w); err != nil {
		t.Fatalf("curl from port %s: %v in %q", port, err, out)
	}
	host, _, _ := net.SplitHostPort(w.Remote)
	return host
}

// timeWaitOn443 counts the gateway's TIME_WAIT sockets from server:443 to
// peer (an address, or an address and port as ss prints it), which only
// intercepted flows have.
func timeWaitOn443(t *testing.T, server, peer string) int {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", nsGateway, "ss", "-Htan",
		"state", "time-wait", "( sport = :443 )").CombinedOutput()
	if err != nil {
		t.Fatalf("ss: %v\n%s", err, out)
	}
	local := net.JoinHostPort(server, "443")
	n := 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if strings.Contains(line, local) && strings.Contains(line, peer) {
			n++
		}
	}
	return n
}

func TestKillFailsOpen(t *testing.T) {
	for _, mode := range []string{"tcx", "legacy"} {
		t.Run(mode, func(t *testing.T) {
			d := startDaemon(t, mode, "")
			c := clientHTTP(tunnelV4, lab.labRoot)
			w, _ := getWhoami(t, c, "https://tunnel.cloudproxy.app/whoami")
			if host, _, _ := net.SplitHostPort(w.Remote); host != gwWANV4 {
				t.Fatalf("before the kill the server saw %s, want the gateway", w.Remote)
			}
			d.kill(t)
			w, _ = getWhoami(t, c, "https://tunnel.cloudproxy.app/whoami")
			if host, _, _ := net.SplitHostPort(w.Remote); host != clientV4 {
				t.Errorf("after kill -9 the server saw %s, want the client %s directly",
					w.Remote, clientV4)
			}
			// snigate cleanup (the unit's ExecStopPost) removes what the
			// killed process left: filters, qdisc, rules, routes.
			if out, err := snigateCmd(t, d, "cleanup", "--config", d.cfgPath); err != nil {
				t.Fatalf("snigate cleanup: %v\n%s", err, out)
			}
			assertNothingLeft(t)
			// The next start works whether or not cleanup ran.
			d2 := startDaemon(t, mode, "")
			w, _ = getWhoami(t, c, "https://tunnel.cloudproxy.app/whoami")
			if host, _, _ := net.SplitHostPort(w.Remote); host != gwWANV4 {
				t.Errorf("after restart the server saw %s, want the gateway", w.Remote)
			}
			d2.stop(t)
			assertNothingLeft(t)
		})
	}
}

// An IPv6 segment with a hop-by-hop options header in front of TCP is still
// steered: the program walks extension headers instead of passing them by.
func TestIPv6ExtensionHeaders(t *testing.T) {
	d := startDaemon(t, "auto", "")
	// One hop-by-hop header of 8 bytes holding a PadN option; the kernel
	// fills in the next-header field.
	hopOpts := string([]byte{0, 0, 1, 4, 0, 0, 0, 0})
	var raw net.Conn
	err := inNS(nsClient, func() error {
		dialer := net.Dialer{Timeout: 5 * time.Second,
			Control: func(_, _ string, c syscall.RawConn) error {
				var serr error
				c.Control(func(fd uintptr) {
					serr = unix.SetsockoptString(int(fd), unix.SOL_IPV6,
						unix.IPV6_HOPOPTS, hopOpts)
				})
				return serr
			}}
		var err error
		raw, err = dialer.Dial("tcp", hostIP(tunnelV6, "443"))
		return err
	})
	if err != nil {
		t.Fatalf("dial with hop-by-hop options: %v", err)
	}
	c := tls.Client(raw, &tls.Config{ServerName: "tunnel.cloudproxy.app", RootCAs: lab.labRoot})
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "GET /whoami HTTP/1.1\r\nHost: tunnel.cloudproxy.app\r\nConnection: close\r\n\r\n")
	body, _ := io.ReadAll(c)
	if !strings.Contains(string(body), gwWANV6) {
		t.Fatalf("the server did not see the gateway, so the segment was not steered: %q", body)
	}
	c.Close() // the connection's log line comes when both directions end
	d.connLog(t, map[string]string{"dst": hostIP(tunnelV6, "443"), "action": "splice"})
}
