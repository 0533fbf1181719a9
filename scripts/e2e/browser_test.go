package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// chromiumProfile makes a home directory whose NSS database trusts the lab
// root (for the spliced host) and the gateway CA (for bumped hosts), as an
// office PC's browser would.
func chromiumProfile(t *testing.T) string {
	t.Helper()
	home := t.TempDir()
	db := "sql:" + filepath.Join(home, ".pki", "nssdb")
	os.MkdirAll(filepath.Join(home, ".pki", "nssdb"), 0o700)
	steps := [][]string{
		{"certutil", "-d", db, "-N", "--empty-password"},
		{"certutil", "-d", db, "-A", "-t", "C,,", "-n", "lab-root", "-i",
			filepath.Join(lab.labDir, "root.crt")},
		{"certutil", "-d", db, "-A", "-t", "C,,", "-n", "snigate-ca", "-i", lab.gwCA},
	}
	for _, s := range steps {
		if out, err := exec.Command(s[0], s[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", s, err, out)
		}
	}
	return home
}

// A real browser, with no proxy settings, loads a page through the bump and
// opens WebSockets from it to tunnel.cloudproxy.app (spliced) and to the
// bumped host; both echo.
func TestChromium(t *testing.T) {
	if _, err := exec.LookPath("chromium"); err != nil {
		t.Fatal("chromium not installed (Debian package chromium; make test installs it)")
	}
	d := startDaemon(t, "auto", "")
	home := chromiumProfile(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", nsClient, "chromium",
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir="+filepath.Join(home, "profile"),
		"--host-resolver-rules=MAP tunnel.cloudproxy.app "+tunnelV4+
			", MAP www.example.test "+webV4+", EXCLUDE localhost",
		"--dump-dom", "https://www.example.test/browser")
	cmd.Env = append(os.Environ(), "HOME="+home)
	out, err := cmd.Output()
	dom := string(out)
	if err != nil || !strings.Contains(dom, "RESULTS") {
		t.Fatalf("chromium: %v\n%s", err, dom)
	}
	for _, url := range []string{"wss://tunnel.cloudproxy.app/ws", "wss://www.example.test/ws"} {
		if !strings.Contains(dom, `"`+url+`":"echo ok"`) {
			t.Errorf("%s did not echo in the browser: %s", url, dom)
		}
	}
	d.connLog(t, map[string]string{"sni": "tunnel.cloudproxy.app", "action": "splice"})
	d.waitAccessLog(t, map[string]string{"path": "/browser", "status": "200"})
	d.waitAccessLog(t, map[string]string{"path": "/ws", "websocket": "true"})
}
