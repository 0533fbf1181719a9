// Package e2e runs snigate for real in the network-namespace lab of
// scripts/lab.sh: eBPF attached to the gateway's LAN interface, real servers,
// and real clients (Go, curl, openssl) in the client namespace. It needs
// root; with -short it is skipped.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// The tests' lab has its own prefix, so that "make demo" or a lab brought
// up by hand (prefix "snigate") never tears it down mid-run.
const (
	labPrefix = "sgtest"
	nsClient  = labPrefix + "-client"
	nsGateway = labPrefix + "-gw"

	tunnelV4 = "198.19.1.2"
	tunnelV6 = "2001:2:0:2::2"
	webV4    = "198.19.1.3"
	webV6    = "2001:2:0:2::3"
	badV4    = "198.19.1.4"
	echoV4   = "198.19.1.5" // plain TCP echo on 443
	clientV4 = "198.18.1.2"
	clientV6 = "2001:2:0:1::2"
	gwWANV4  = "198.19.1.1"
	gwWANV6  = "2001:2:0:2::1"
)

// lab holds what TestMain prepared.
var lab struct {
	root    string // repository root
	dir     string // scratch directory for binaries, CA and configs
	labDir  string // scripts/lab.sh state: certificates
	snigate string
	labRoot *x509.CertPool
	gwRoot  *x509.CertPool
	gwCA    string // path of the gateway CA certificate
}

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		fmt.Println("e2e: skipped in -short mode")
		os.Exit(0)
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "e2e: the lab tests need root (network namespaces, eBPF)")
		os.Exit(1)
	}
	code, err := setupAndRun(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	os.Exit(code)
}

func setupAndRun(m *testing.M) (int, error) {
	wd, _ := os.Getwd()
	lab.root = filepath.Join(wd, "..", "..")
	dir, err := os.MkdirTemp("", "snigate-e2e-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	lab.dir = dir
	lab.labDir = filepath.Join(dir, "lab")

	lab.snigate = filepath.Join(dir, "snigate")
	labserver := filepath.Join(dir, "labserver")
	for bin, pkg := range map[string]string{lab.snigate: "./cmd/snigate",
		labserver: "./scripts/labserver"} {
		if out, err := command(lab.root, "go", "build", "-o", bin, pkg); err != nil {
			return 0, fmt.Errorf("build %s: %v\n%s", pkg, err, out)
		}
	}
	if out, err := command(lab.root, lab.snigate, "ca", "init", "--out",
		filepath.Join(dir, "ca")); err != nil {
		return 0, fmt.Errorf("snigate ca init: %v\n%s", err, out)
	}
	lab.gwCA = filepath.Join(dir, "ca", "ca.crt")

	labEnv := []string{"LAB_PREFIX=" + labPrefix, "LAB_DIR=" + lab.labDir,
		"LABSERVER=" + labserver}
	down := func() { commandEnv(lab.root, labEnv, "scripts/lab.sh", "down") }
	defer down()
	if out, err := commandEnv(lab.root, labEnv, "scripts/lab.sh", "up"); err != nil {
		return 0, fmt.Errorf("lab.sh up: %v\n%s", err, out)
	}
	if lab.labRoot, err = loadPool(filepath.Join(lab.labDir, "root.crt")); err != nil {
		return 0, err
	}
	if lab.gwRoot, err = loadPool(lab.gwCA); err != nil {
		return 0, err
	}
	return m.Run(), nil
}

func loadPool(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no certificate", path)
	}
	return pool, nil
}

func command(dir, name string, args ...string) ([]byte, error) {
	return commandEnv(dir, nil, name, args...)
}

func commandEnv(dir string, env []string, name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	return cmd.CombinedOutput()
}

// inNS runs fn on an OS thread switched into the named namespace. Sockets
// created by fn belong to that namespace for their whole life.
func inNS(name string, fn func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return err
	}
	defer orig.Close()
	target, err := netns.GetFromName(name)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", name, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		return fmt.Errorf("enter netns %s: %w", name, err)
	}
	defer netns.Set(orig)
	return fn()
}

// clientDial dials from the client namespace, as an office PC would.
func clientDial(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := inNS(nsClient, func() error {
		var err error
		d := net.Dialer{Timeout: 5 * time.Second}
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// inClient runs a command in the client namespace with a time bound.
func inClient(t *testing.T, name string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	full := append([]string{"netns", "exec", nsClient, name}, args...)
	cmd := exec.CommandContext(ctx, "ip", full...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	cmd.Stdin = strings.NewReader("")
	err = cmd.Run()
	return o.String(), e.String(), err
}

// daemon is one snigate process in the gateway namespace.
type daemon struct {
	mode    string
	cfgPath string
	control string
	cmd     *exec.Cmd
	mu      sync.Mutex
	logs    []map[string]any
	raw     bytes.Buffer
	done    chan error
	// exited is set once the test has collected the process's end.
	exited bool
}

// startDaemon writes a config with the given attach mode and extra YAML,
// starts snigate and waits until it logs that it started. Cleanup stops it
// with SIGTERM and fails the test unless it exits 0.
func startDaemon(t *testing.T, mode string, policy string) *daemon {
	t.Helper()
	return startDaemonEnv(t, mode, policy, nil)
}

// metricsAddr is where the daemon under test serves metrics, inside the
// gateway namespace.
const metricsAddr = "127.0.0.1:9464"

// daemonConfig is the configuration file the tests run snigate with.
// extra is appended as is: the policy, and an upstream section that then
// replaces the default one.
func daemonConfig(mode, extra, control string) string {
	if extra == "" {
		extra = defaultPolicy
	}
	upstream := "upstream:\n  roots: [" + filepath.Join(lab.labDir, "root.crt") + "]\n"
	if strings.Contains(extra, "upstream:") {
		upstream = ""
	}
	return fmt.Sprintf(`intercept:
  interfaces: [lan0]
  ports: [443]
  attach: %s
listen: ["127.0.0.1:15443", "[::1]:15443"]
ca:
  cert: %s
  key: %s
%shello:
  timeout: 3s
log:
  level: debug
  format: json
shutdown:
  drain: 2s
control: %s
metrics:
  listen: %s
  pprof: true
%s`, mode, lab.gwCA, filepath.Join(filepath.Dir(lab.gwCA), "ca.key"),
		upstream, control, metricsAddr, extra)
}

// startDaemonEnv starts snigate with extra environment variables.
func startDaemonEnv(t *testing.T, mode, policy string, env []string) *daemon {
	t.Helper()
	dir := t.TempDir()
	d := &daemon{mode: mode, done: make(chan error, 1),
		cfgPath: filepath.Join(dir, "snigate.yaml"),
		control: filepath.Join(dir, "control.sock")}
	d.writeConfig(t, policy)
	d.cmd = exec.Command("ip", "netns", "exec", nsGateway, lab.snigate, "run",
		"--config", d.cfgPath)
	d.cmd.Env = append(os.Environ(), env...)
	stderr, err := d.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("start snigate: %v", err)
	}
	started := make(chan struct{})
	go d.readLogs(stderr, started)
	go func() { d.done <- d.cmd.Wait() }()

	select {
	case <-started:
	case err := <-d.done:
		t.Fatalf("snigate exited before starting: %v\n%s", err, d.output())
	case <-time.After(15 * time.Second):
		d.cmd.Process.Kill()
		t.Fatalf("snigate did not start within 15s\n%s", d.output())
	}
	t.Cleanup(func() { d.stop(t) })
	return d
}

// writeConfig (re)writes the daemon's configuration file with policy.
func (d *daemon) writeConfig(t *testing.T, policy string) {
	t.Helper()
	cfg := daemonConfig(d.mode, policy, d.control)
	if err := os.WriteFile(d.cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
}

const defaultPolicy = `policy:
  rules:
    - sni: [tunnel.cloudproxy.app, "*.tunnel.cloudproxy.app", "*.mtls.googleapis.com"]
      action: splice
  no_sni: splice
  not_tls: block
  default: bump
`

func (d *daemon) readLogs(r interface{ Read([]byte) (int, error) }, started chan struct{}) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	once := sync.Once{}
	for sc.Scan() {
		line := sc.Bytes()
		var m map[string]any
		d.mu.Lock()
		d.raw.Write(line)
		d.raw.WriteByte('\n')
		if json.Unmarshal(line, &m) == nil {
			d.logs = append(d.logs, m)
		}
		d.mu.Unlock()
		if m["msg"] == "started" {
			once.Do(func() { close(started) })
		}
	}
}

func (d *daemon) output() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.raw.String()
}

// stop sends SIGTERM and requires a clean exit within the drain time.
func (d *daemon) stop(t *testing.T) {
	t.Helper()
	if d.exited {
		return
	}
	d.exited = true
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-d.done:
		if err != nil {
			t.Errorf("snigate exited with %v after SIGTERM\n%s", err, d.output())
		}
	case <-time.After(10 * time.Second):
		d.cmd.Process.Kill()
		<-d.done
		t.Errorf("snigate did not exit within 10s of SIGTERM\n%s", d.output())
	}
}

// kill ends the daemon with SIGKILL, as a crash would.
func (d *daemon) kill(t *testing.T) {
	t.Helper()
	d.exited = true
	d.cmd.Process.Kill()
	<-d.done
}

// connLog waits for the "connection" log line whose fields match want and
// returns it.
func (d *daemon) connLog(t *testing.T, want map[string]string) map[string]any {
	t.Helper()
	want["msg"] = "connection"
	return d.waitFor(t, want)
}

// waitFor waits for a log line whose fields match want and returns it.
func (d *daemon) waitFor(t *testing.T, want map[string]string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		d.mu.Lock()
		for _, m := range d.logs {
			if matches(m, want) {
				d.mu.Unlock()
				return m
			}
		}
		d.mu.Unlock()
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("no log line with %v\n%s", want, d.output())
	return nil
}

// waitLog waits for a log line with the given message.
func (d *daemon) waitLog(t *testing.T, msg string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		d.mu.Lock()
		for _, m := range d.logs {
			if m["msg"] == msg {
				d.mu.Unlock()
				return
			}
		}
		d.mu.Unlock()
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no %q log line\n%s", msg, d.output())
}

// noConnLog fails if the dataplane logged a connection to dst.
func (d *daemon) noConnLog(t *testing.T, dst string) {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, m := range d.logs {
		if m["msg"] == "connection" && m["dst"] == dst {
			t.Errorf("the dataplane handled a connection to %s: %v", dst, m)
		}
	}
}

func matches(m map[string]any, want map[string]string) bool {
	for k, v := range want {
		if fmt.Sprint(m[k]) != v {
			return false
		}
	}
	return true
}
