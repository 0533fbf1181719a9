package e2e

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
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
