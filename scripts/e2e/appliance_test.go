package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/sys/unix"
)

// notifyListener is a unix datagram socket standing in for systemd's
// NOTIFY_SOCKET; it records every message the daemon sends.
type notifyListener struct {
	conn *net.UnixConn
	msgs chan string
}

func listenNotify(t *testing.T) (*notifyListener, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	n := &notifyListener{conn: conn, msgs: make(chan string, 64)}
	go func() {
		buf := make([]byte, 4096)
		oob := make([]byte, 256)
		for {
			k, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
			if err != nil {
				close(n.msgs)
				return
			}
			// A barrier carries a pipe's write end; closing it, as
			// systemd does, answers the barrier.
			if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
				for _, m := range msgs {
					fds, _ := unix.ParseUnixRights(&m)
					for _, fd := range fds {
						unix.Close(fd)
					}
				}
			}
			n.msgs <- string(buf[:k])
		}
	}()
	t.Cleanup(func() { conn.Close() })
	return n, path
}

// expect waits for the next message and checks it starts with want.
func (n *notifyListener) expect(t *testing.T, want string) string {
	t.Helper()
	for {
		select {
		case m, ok := <-n.msgs:
			if !ok {
				t.Fatalf("notify socket closed while waiting for %q", want)
			}
			if strings.HasPrefix(m, "WATCHDOG=1") && want != "WATCHDOG=1" {
				continue // pings come at any time between the others
			}
			if !strings.HasPrefix(m, want) {
				t.Fatalf("notify message %q, want %q", m, want)
			}
			return m
		case <-time.After(10 * time.Second):
			t.Fatalf("no %q on the notify socket within 10s", want)
		}
	}
}

func TestSystemdNotify(t *testing.T) {
	n, path := listenNotify(t)
	d := startDaemonEnv(t, "auto", "", []string{"NOTIFY_SOCKET=" + path,
		"WATCHDOG_USEC=400000"})
	n.expect(t, "READY=1")
	n.expect(t, "WATCHDOG=1")

	d.cmd.Process.Signal(syscall.SIGHUP)
	m := n.expect(t, "RELOADING=1")
	if !regexp.MustCompile(`MONOTONIC_USEC=\d+`).MatchString(m) {
		t.Errorf("reload message %q carries no MONOTONIC_USEC", m)
	}
	n.expect(t, "READY=1")

	start := time.Now()
	d.stop(t)
	n.expect(t, "STOPPING=1")
	n.expect(t, "BARRIER=1")
	if took := time.Since(start); took > 4*time.Second {
		t.Errorf("stopping took %v: the barrier was not answered promptly", took)
	}
}

// wsDial opens a WebSocket from the client namespace and returns it with a
// function that checks one echo.
func wsDial(t *testing.T, c *http.Client, url string) (*websocket.Conn, func(string)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPClient: c})
	if err != nil {
		t.Fatalf("websocket dial %s: %v", url, err)
	}
	t.Cleanup(func() { ws.CloseNow() })
	echo := func(msg string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := ws.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			t.Fatalf("%s: write after reload: %v", url, err)
		}
		_, got, err := ws.Read(ctx)
		if err != nil || string(got) != msg {
			t.Fatalf("%s: echo %q, %v; want %q", url, got, err, msg)
		}
	}
	return ws, echo
}

func snigateCmd(t *testing.T, d *daemon, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	full := append([]string{"netns", "exec", nsGateway, lab.snigate}, args...)
	out, err := exec.CommandContext(ctx, "ip", full...).CombinedOutput()
	return string(out), err
}

// A reload changes the policy for new connections while WebSockets through
// both paths keep echoing; a bad configuration is refused and changes
// nothing.
func TestReload(t *testing.T) {
	d := startDaemon(t, "auto", "")
	// The start line says how bumped connections are secured.
	if m := d.startedLine(t); m["key_exchange"] != "hybrid" || m["verify_failure"] != "reject" {
		t.Errorf("started line %v, want key_exchange hybrid and verify_failure reject", m)
	}
	_, spliced := wsDial(t, clientHTTP(tunnelV4, lab.labRoot), "wss://tunnel.cloudproxy.app/ws")
	_, bumped := wsDial(t, clientHTTP(webV4, lab.gwRoot), "wss://www.example.test/ws")
	spliced("before")
	bumped("before")

	// www.example.test moves from bump to splice.
	d.writeConfig(t, `policy:
  rules:
    - sni: [tunnel.cloudproxy.app, www.example.test]
      action: splice
  default: bump
`)
	if out, err := snigateCmd(t, d, "reload", "--control", d.control); err != nil {
		t.Fatalf("snigate reload: %v\n%s", err, out)
	}
	spliced("after reload")
	bumped("after reload")
	_, issuer := getWhoami(t, clientHTTP(webV4, lab.labRoot), "https://www.example.test/whoami")
	if issuer == "snigate gateway CA" {
		t.Errorf("after the reload www.example.test is still bumped")
	}

	// A change only a restart applies is left out, and the reload says so.
	mode := d.mode
	d.mode = map[string]string{"legacy": "tcx"}[mode]
	if d.mode == "" {
		d.mode = "legacy"
	}
	d.writeConfig(t, `policy:
  rules:
    - sni: [tunnel.cloudproxy.app, www.example.test]
      action: splice
  default: bump
`)
	d.mode = mode
	out, err := snigateCmd(t, d, "reload", "--control", d.control)
	if err != nil || !strings.Contains(out, "changes to intercept need a restart") {
		t.Errorf("reload with another attach mode: %v, output %q; want it to name intercept", err, out)
	}
	spliced("after a reload that kept the steering")

	// A broken file is refused; the running policy stays.
	d.writeConfig(t, "policy:\n  default: splise\n")
	out, err = snigateCmd(t, d, "reload", "--control", d.control)
	if err == nil || !strings.Contains(out, `"splise"`) {
		t.Errorf("reload of a bad config: %v, output %q; want a failure naming the value", err, out)
	}
	_, issuer = getWhoami(t, clientHTTP(webV4, lab.labRoot), "https://www.example.test/whoami")
	if issuer == "snigate gateway CA" {
		t.Errorf("a refused reload changed the policy")
	}
	spliced("after refused reload")
	bumped("after refused reload")

	status, err := snigateCmd(t, d, "status", "--control", d.control)
	if err != nil {
		t.Fatalf("snigate status: %v\n%s", err, status)
	}
	for _, want := range []string{"attached:", "lan0=", "reloads:", "refused"} {
		if !strings.Contains(status, want) {
			t.Errorf("status output lacks %q:\n%s", want, status)
		}
	}
}

// scrape fetches the daemon's metrics from inside the gateway namespace.
func scrape(t *testing.T) map[string]float64 {
	t.Helper()
	return parseMetrics(getFromGateway(t, "/metrics"))
}

// getFromGateway fetches a path of the metrics endpoint, inside the
// gateway namespace, and fails unless the answer is 200.
func getFromGateway(t *testing.T, path string) []byte {
	t.Helper()
	// The transport dials on its own goroutine, so the dial itself must
	// switch namespaces.
	dial := func(ctx context.Context, network, addr string) (c net.Conn, err error) {
		err = inNS(nsGateway, func() error {
			c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
	client := &http.Client{Timeout: 5 * time.Second,
		Transport: &http.Transport{DisableKeepAlives: true, DialContext: dial}}
	resp, err := client.Get("http://" + metricsAddr + path)
	var body []byte
	if err == nil {
		body, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil && resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
	}
	if err != nil {
		t.Fatalf("get %s from the gateway: %v", path, err)
	}
	return body
}

func parseMetrics(body []byte) map[string]float64 {
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(string(body)))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") || !strings.HasPrefix(line, "snigate_") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

func TestMetrics(t *testing.T) {
	d := startDaemon(t, "auto", "")
	for range 3 {
		getWhoami(t, clientHTTP(tunnelV4, lab.labRoot), "https://tunnel.cloudproxy.app/whoami")
	}
	for range 2 {
		getWhoami(t, clientHTTP(webV4, lab.gwRoot), "https://www.example.test/whoami")
	}
	inClient(t, "curl", "-sS", "--cacert", lab.gwCA, "--resolve",
		"bad.example.test:443:"+badV4, "https://bad.example.test/")
	d.connLog(t, map[string]string{"sni": "bad.example.test"})
	// Connections are counted when they end; wait for all six.
	deadline := time.Now().Add(5 * time.Second)
	var m map[string]float64
	for time.Now().Before(deadline) {
		m = scrape(t)
		ended := 0.0
		for _, a := range []string{"splice", "bump", "block"} {
			for _, o := range []string{"ok", "error"} {
				ended += m[`snigate_connections_total{action="`+a+`",outcome="`+o+`"}`]
			}
		}
		if ended >= 6 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	for name, want := range map[string]float64{
		`snigate_connections_total{action="splice",outcome="ok"}`:  3,
		`snigate_connections_total{action="bump",outcome="ok"}`:    2,
		`snigate_connections_total{action="bump",outcome="error"}`: 1,
		`snigate_bump_failures_total{reason="upstream_verify"}`:    1,
		`snigate_hellos_total{result="named"}`:                     6,
		`snigate_cert_cache_entries`:                               1,
		`snigate_connections_active{action="splice"}`:              0,
	} {
		if got := m[name]; got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	// metrics.pprof serves the profiler next to the metrics.
	if idx := getFromGateway(t, "/debug/pprof/"); !strings.Contains(string(idx), "goroutine") {
		t.Errorf("/debug/pprof/ does not list the profiles")
	}
	if m[`snigate_cert_forge_seconds_total`] <= 0 {
		t.Errorf("snigate_cert_forge_seconds_total = %v, want > 0",
			m[`snigate_cert_forge_seconds_total`])
	}
	for _, name := range []string{`snigate_steering_packets_total{verdict="steered_new"}`,
		`snigate_relayed_bytes_total{action="splice",direction="down"}`,
		`snigate_cert_cache_hits_total`} {
		if m[name] < 1 {
			t.Errorf("%s = %v, want > 0", name, m[name])
		}
	}
	if t.Failed() {
		t.Log(fmt.Sprint(m))
	}

	// An idle spliced WebSocket parks both its directions, and they count.
	ws, echo := wsDial(t, clientHTTP(tunnelV4, lab.labRoot), "wss://tunnel.cloudproxy.app/ws")
	echo("hello")
	deadline = time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && scrape(t)[`snigate_relay_parked_directions`] < 2 {
		time.Sleep(100 * time.Millisecond)
	}
	if got := scrape(t)[`snigate_relay_parked_directions`]; got != 2 {
		t.Errorf("snigate_relay_parked_directions = %v with one idle tunnel, want 2", got)
	}
	echo("after parking")
	ws.CloseNow()
}

// SIGTERM stops accepting at once (new connections go straight out), lets
// established connections run for the drain time, then closes them and
// exits 0 with nothing left behind.
func TestShutdownDrains(t *testing.T) {
	d := startDaemon(t, "auto", "")
	_, spliced := wsDial(t, clientHTTP(tunnelV4, lab.labRoot), "wss://tunnel.cloudproxy.app/ws")
	spliced("before SIGTERM")
	start := time.Now()
	d.cmd.Process.Signal(syscall.SIGTERM)
	d.waitLog(t, "stopping")
	// Draining: the tunnel still works and a new connection goes direct.
	spliced("while draining")
	w, _ := getWhoami(t, clientHTTP(tunnelV4, lab.labRoot), "https://tunnel.cloudproxy.app/whoami")
	if host, _, _ := net.SplitHostPort(w.Remote); host != clientV4 {
		t.Errorf("a connection during the drain reached the server from %s, want the client", w.Remote)
	}
	d.exited = true
	select {
	case err := <-d.done:
		if err != nil {
			t.Fatalf("snigate exited with %v after SIGTERM", err)
		}
	case <-time.After(10 * time.Second):
		d.cmd.Process.Kill()
		t.Fatal("snigate did not exit within 10s of SIGTERM")
	}
	if took := time.Since(start); took < 2*time.Second {
		t.Errorf("snigate exited after %v, before the 2s drain time", took)
	}
	d.waitLog(t, "drain")
	assertNothingLeft(t)
}

// startedLine returns the daemon's "started" log line.
func (d *daemon) startedLine(t *testing.T) map[string]any {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, m := range d.logs {
		if m["msg"] == "started" {
			return m
		}
	}
	t.Fatalf("no started line in\n%s", d.raw.String())
	return nil
}
