package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os/exec"
	"testing"
	"time"
)

// gwSysctl sets a sysctl inside the lab's gateway namespace and restores it
// when the test ends. The host's own sysctls are never touched.
func gwSysctl(t *testing.T, key, value string) {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", nsGateway, "sysctl", "-n", key).Output()
	if err != nil {
		t.Fatalf("read %s in %s: %v", key, nsGateway, err)
	}
	old := string(out[:len(out)-1])
	set := func(v string) {
		if out, err := exec.Command("ip", "netns", "exec", nsGateway, "sysctl", "-qw",
			key+"="+v).CombinedOutput(); err != nil {
			t.Fatalf("set %s=%s in %s: %v %s", key, v, nsGateway, err, out)
		}
	}
	set(value)
	t.Cleanup(func() { set(old) })
}

// echoOnce sends a line over c and checks that the echo server returns it.
func echoOnce(t *testing.T, c net.Conn, r *bufio.Reader, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(c, "%s\n", msg); err != nil {
		t.Fatalf("send %q: %v", msg, err)
	}
	line, err := r.ReadString('\n')
	if err != nil || line != msg+"\n" {
		t.Fatalf("echo of %q: %q, %v", msg, line, err)
	}
}

// A connection opened while snigate was not running goes on after it
// starts: its segments have no socket on the gateway and are not SYNs, so
// they are forwarded as before instead of being reset by the listener.
func TestStartKeepsExistingFlows(t *testing.T) {
	c, err := clientDial(context.Background(), "tcp", hostIP(echoV4, "443"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	echoOnce(t, c, r, "before snigate")
	d := startDaemon(t, "auto", "")
	echoOnce(t, c, r, "after snigate started")
	d.stop(t)
	echoOnce(t, c, r, "after snigate stopped")
}

// With SYN cookies always on, every handshake's last ACK finds no request
// socket; the program recognises the cookie and hands it to the listener.
func TestSynCookies(t *testing.T) {
	gwSysctl(t, "net.ipv4.tcp_syncookies", "2")
	d := startDaemon(t, "auto", "")
	testSpliceWebSocket(t, d, tunnelV4, gwWANV4)
	testBump(t, d, webV6, gwWANV6)
}

// QUIC to port 443 is dropped (block_quic defaults to on), so browsers fall
// back to TCP; UDP to other ports passes.
func TestBlockQUIC(t *testing.T) {
	startDaemon(t, "auto", "")
	var got = map[string]bool{}
	for _, port := range []string{"443", "4443"} {
		got[port] = udpReaches(t, echoV4, port)
	}
	if got["443"] {
		t.Error("UDP to port 443 reached the server: QUIC is not blocked")
	}
	if !got["4443"] {
		t.Error("UDP to port 4443 did not reach the server")
	}
}

// udpReaches sends datagrams from the client to ip:port and reports
// whether one arrived at a socket the test opened in the servers'
// namespace.
func udpReaches(t *testing.T, ip, port string) bool {
	t.Helper()
	var srv net.PacketConn
	err := inNS(labPrefix+"-srv", func() error {
		var err error
		srv, err = net.ListenPacket("udp", net.JoinHostPort(ip, port))
		return err
	})
	if err != nil {
		t.Fatalf("listen udp %s:%s: %v", ip, port, err)
	}
	defer srv.Close()
	var cl net.Conn
	err = inNS(nsClient, func() error {
		var err error
		cl, err = net.Dial("udp", net.JoinHostPort(ip, port))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	buf := make([]byte, 64)
	for range 3 {
		cl.Write([]byte("quic initial"))
		srv.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		if _, _, err := srv.ReadFrom(buf); err == nil {
			return true
		}
	}
	return false
}

// With forwarding off on the LAN interface the gateway passes nothing on,
// so the dataplane must not proxy port 443 either.
func TestForwardingOffIsNotSteered(t *testing.T) {
	gwSysctl(t, "net.ipv4.conf.lan0.forwarding", "0")
	d := startDaemon(t, "auto", "")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c, err := clientDial(ctx, "tcp", hostIP(tunnelV4, "443"))
	if err == nil {
		c.Close()
		t.Error("a connection through a gateway with forwarding off succeeded")
	}
	d.noConnLog(t, hostIP(tunnelV4, "443"))
}
