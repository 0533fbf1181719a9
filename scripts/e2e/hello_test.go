package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// A plain HTTP request on port 443 is steered, classified not_tls and gets
// the not_tls action (block).
func TestPlainHTTPOn443(t *testing.T) {
	d := startDaemon(t, "auto", "")
	_, _, err := inClient(t, "curl", "-sS", "-m", "5", "http://"+webV4+":443/")
	if err == nil {
		t.Error("plain HTTP on port 443 got an answer through the gateway")
	}
	d.connLog(t, map[string]string{"hello": "not_tls", "action": "block",
		"dst": hostIP(webV4, "443")})
}

// rssKiB reads a process's resident set size.
func rssKiB(t *testing.T, pid int) int {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
			return n
		}
	}
	t.Fatalf("no VmRSS for pid %d", pid)
	return 0
}

// Silent clients are cut at the hello deadline with a log line saying so,
// and a thousand of them at once cost the daemon far less than a hello
// buffer each: they wait for their first byte without one.
func TestSilentClients(t *testing.T) {
	const n = 1000
	d := startDaemon(t, "auto", "")
	pid := d.cmd.Process.Pid
	before := rssKiB(t, pid)

	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	start := time.Now()
	for i := range n {
		c, err := clientDial(context.Background(), "tcp", hostIP(tunnelV4, "443"))
		if err != nil {
			t.Fatalf("silent connection %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	time.Sleep(500 * time.Millisecond)
	during := rssKiB(t, pid)
	perConn := float64(during-before) * 1024 / n
	t.Logf("%d silent clients: daemon RSS %d KiB -> %d KiB, %.0f bytes per connection",
		n, before, during, perConn)
	// A hello buffer alone is 16 KiB; a goroutine, its stack and the
	// connection state stay well under that.
	if perConn > 16<<10 {
		t.Errorf("%.0f bytes of RSS per silent client, want under a hello buffer (16 KiB)",
			perConn)
	}

	// Each is cut at the 3s deadline: its read ends with a reset.
	buf := make([]byte, 1)
	for i, c := range conns {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Read(buf); err == nil {
			t.Fatalf("silent connection %d got data", i)
		}
	}
	if waited := time.Since(start); waited > 9*time.Second {
		t.Errorf("silent clients were cut after %v, want about 3s", waited)
	}
	m := d.connLog(t, map[string]string{"hello": "timeout", "action": "block"})
	if e, _ := m["error"].(string); !strings.Contains(e, "timeout") {
		t.Errorf("log line error %q does not name the timeout", e)
	}
}

// The splice path replays every byte the dataplane read: the hello's
// records exactly as framed, and anything the client sent after them. The
// lab's plain echo server on 198.19.1.5:443 sends it all back.
func TestSpliceReplaysRawBytes(t *testing.T) {
	d := startDaemon(t, "auto", "")
	for _, tt := range []struct {
		file    string
		oneByte bool
	}{
		{"curl.bin", false},
		{"synthetic-record-split-3.bin", true},
	} {
		t.Run(tt.file, func(t *testing.T) {
			hello, err := os.ReadFile(filepath.Join(lab.root, "dataplane/testdata/hellos", tt.file))
			if err != nil {
				t.Fatal(err)
			}
			sent := append(append([]byte(nil), hello...), "EARLY-DATA"...)
			c, err := clientDial(context.Background(), "tcp", hostIP(echoV4, "443"))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			if tt.oneByte {
				c.(*net.TCPConn).SetNoDelay(true)
				for i := range sent {
					if _, err := c.Write(sent[i : i+1]); err != nil {
						t.Fatal(err)
					}
				}
			} else if _, err := c.Write(sent); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(sent))
			if _, err := io.ReadFull(c, got); err != nil {
				t.Fatalf("read the echo: %v", err)
			}
			if !bytes.Equal(got, sent) {
				t.Fatalf("echo differs from what the client sent (%d bytes)", len(sent))
			}
			c.Close()
			d.connLog(t, map[string]string{"dst": hostIP(echoV4, "443"), "action": "splice",
				"sni": "tunnel.cloudproxy.app", "bytes_up": strconv.Itoa(len(sent))})
		})
	}
}
