package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/snigate/snigate/bpf"
	"github.com/snigate/snigate/dataplane"
	gwtls "github.com/snigate/snigate/tls"
)

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "snigate.yaml")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestLoadConfigDefaults(t *testing.T) {
	cfg, err := LoadConfig(writeConfig(t, "intercept:\n  interfaces: [lan0]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.ports(); len(got) != 1 || got[0] != 443 {
		t.Errorf("ports = %v, want [443]", got)
	}
	if bpf.Mode(cfg.Intercept.Attach) != bpf.ModeAuto {
		t.Errorf("attach = %q, want auto", cfg.Intercept.Attach)
	}
	p, err := cfg.policy()
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]dataplane.Action{
		"tunnel.cloudproxy.app":      dataplane.ActionSplice,
		"x.tunnel.cloudproxy.app":    dataplane.ActionSplice,
		"oauth2.mtls.googleapis.com": dataplane.ActionSplice,
		"www.google.com":             dataplane.ActionBump,
	} {
		if got, _ := p.Decide([]byte(name)); got != want {
			t.Errorf("default policy: %s -> %s, want %s", name, got, want)
		}
	}
	if p.ForClass(dataplane.HelloNotTLS) != dataplane.ActionBlock {
		t.Error("default not_tls is not block")
	}
	if !cfg.usesBump() {
		t.Error("default policy does not use the bump path")
	}
}

func TestLoadConfigFull(t *testing.T) {
	cfg, err := LoadConfig(writeConfig(t, `intercept:
  interfaces: [lan0, lan1]
  ports: [443, 8443]
  bypass: [192.0.2.0/24, 2001:db8::1]
  attach: legacy
listen: ["127.0.0.1:15443"]
hello:
  timeout: 3s
  max_bytes: 4096
policy:
  rules:
    - sni: [example.test]
      action: block
  no_sni: block
  not_tls: splice
  malformed: block
  default: splice
shutdown:
  drain: 1s
upstream:
  verify_failure: mimic
  key_exchange: classic
`))
	if err != nil {
		t.Fatal(err)
	}
	if gwtls.VerifyFailureMode(cfg.Upstream.VerifyFailure) != gwtls.VerifyMimic ||
		gwtls.KeyExchange(cfg.Upstream.KeyExchange) != gwtls.KeyExchangeClassic {
		t.Errorf("upstream = %+v, want mimic and classic", cfg.Upstream)
	}
	if len(cfg.Intercept.Interfaces) != 2 || len(cfg.ports()) != 2 {
		t.Errorf("interfaces %v ports %v", cfg.Intercept.Interfaces, cfg.ports())
	}
	if b := cfg.bypass(); len(b) != 2 || b[1].Bits() != 128 {
		t.Errorf("bypass = %v, want a /24 and a /128", b)
	}
	if time.Duration(cfg.Hello.Timeout) != 3*time.Second || cfg.Hello.MaxBytes != 4096 {
		t.Errorf("hello = %+v", cfg.Hello)
	}
	if cfg.usesBump() {
		t.Error("a policy without bump says it uses the bump path")
	}
}

// Every error names the file, the line and the offending value.
func TestLoadConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		text string
		want string
	}{
		{"unknown key", "intercept:\n  interfaces: [lan0]\n  portz: [443]\n",
			`:3: unknown key "portz" in intercept`},
		{"scalar for a list", "intercept:\n  interfaces: [lan0]\n  ports: 443\n",
			`:3: intercept.ports: "443" is not a list (write [a, b])`},
		{"word for a bool", "intercept:\n  interfaces: [lan0]\n# metrics\n\nmetrics:\n" +
			"  listen: 127.0.0.1:9464\n  pprof: maybe\n",
			`:7: metrics.pprof: "maybe" is not true or false`},
		{"scalar for a list in a rule", "intercept:\n  interfaces: [lan0]\npolicy:\n  rules:\n" +
			"    - action: bump\n      sni: a.test\n",
			`:6: policy.rules[].sni: "a.test" is not a list`},
		{"bad action", "intercept:\n  interfaces: [lan0]\npolicy:\n  rules:\n" +
			"    - sni: [a.test]\n      action: splise\n",
			`:6: action "splise" is not splice, bump or block`},
		{"bad port", "intercept:\n  interfaces: [lan0]\n  ports: [70000]\n",
			`:3: port "70000" is not a number in 1-65535`},
		{"bad bypass", "intercept:\n  interfaces: [lan0]\n  bypass: [10.0.0.0/33]\n",
			`:3: "10.0.0.0/33" is not an address or prefix`},
		{"bad listen", "intercept:\n  interfaces: [lan0]\nlisten: [localhost]\n",
			`:3: "localhost" is not an address:port`},
		{"bad duration", "intercept:\n  interfaces: [lan0]\nhello:\n  timeout: soon\n",
			`:4: "soon" is not a positive duration`},
		{"bad attach", "intercept:\n  interfaces: [lan0]\n  attach: xdp\n",
			`:3: attach mode "xdp" is not auto, tcx or legacy`},
		{"bad rule name", "intercept:\n  interfaces: [lan0]\npolicy:\n  rules:\n" +
			"    - sni: [ok.test, \"bad name.test\"]\n      action: bump\n",
			`:5: rules[0]: name "bad name.test"`},
		{"rule without action", "intercept:\n  interfaces: [lan0]\npolicy:\n  rules:\n" +
			"    - sni: [a.test]\n", `:5: rule has no action`},
		{"no interfaces", "listen: [\"127.0.0.1:1\"]\n", "intercept.interfaces"},
		{"unknown key in a rule", "intercept:\n  interfaces: [lan0]\npolicy:\n  rules:\n" +
			"    - sni: [a.test]\n      action: bump\n      add_request_header: {X-A: b}\n",
			`:7: unknown key "add_request_header" in policy.rules[]`},
		{"bad header name", "intercept:\n  interfaces: [lan0]\npolicy:\n  rules:\n" +
			"    - sni: [a.test]\n      action: bump\n      add_request_headers: {\"X A\": b}\n",
			`header name "X A"`},
		{"header the proxy sets", "intercept:\n  interfaces: [lan0]\npolicy:\n  rules:\n" +
			"    - sni: [a.test]\n      action: bump\n      add_request_headers: {host: evil.test}\n",
			`:7: header host cannot be added`},
		{"loopback interface", "intercept:\n  interfaces: [lan0, lo]\n",
			`:2: interface lo is not a LAN interface`},
		{"duplicate interface", "intercept:\n  interfaces:\n    - lan0\n    - lan0\n",
			`:4: interface "lan0" is listed twice`},
		{"bad log level", "intercept:\n  interfaces: [lan0]\nlog:\n  level: loud\n",
			`:4: level "loud" is not debug, info, warn or error`},
		{"bad max_bytes", "intercept:\n  interfaces: [lan0]\nhello:\n  max_bytes: 100\n",
			`:4: max_bytes 100 not in 512-16384`},
		{"bad metrics address", "intercept:\n  interfaces: [lan0]\nmetrics:\n  listen: localhost\n",
			`:4: listen "localhost" is not an address:port`},
		{"relative control socket", "intercept:\n  interfaces: [lan0]\ncontrol: ctl.sock\n",
			`:3: control "ctl.sock" is not an absolute socket path`},
		{"reserved table", "intercept:\n  interfaces: [lan0]\n  table: 255\n",
			`:3: table 255 is reserved`},
		{"two IPv4 listeners", "intercept:\n  interfaces: [lan0]\n" +
			"listen: [\"127.0.0.1:1\", \"127.0.0.2:1\"]\n", "one listener per family"},
		{"headers on a splice rule", "intercept:\n  interfaces: [lan0]\npolicy:\n  rules:\n" +
			"    - sni: [a.test]\n      action: splice\n      add_request_headers: {X-A: b}\n",
			`:5: add_request_headers needs action bump`},
		{"bump for not_tls", "intercept:\n  interfaces: [lan0]\npolicy:\n  not_tls: bump\n",
			"policy.not_tls: bump needs a TLS hello"},
		{"bad verify_failure", "intercept:\n  interfaces: [lan0]\nupstream:\n  verify_failure: warn\n",
			`:4: verify_failure "warn" is not reject or mimic`},
		{"bad key_exchange", "intercept:\n  interfaces: [lan0]\nupstream:\n  key_exchange: mlkem\n",
			`:4: key_exchange "mlkem" is not hybrid or classic`},
		{"not yaml", "intercept: [\n", "snigate.yaml"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeConfig(t, tt.text)
			_, err := LoadConfig(path)
			if err == nil {
				t.Fatalf("LoadConfig accepted:\n%s", tt.text)
			}
			if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q, want the path and %q", err, tt.want)
			}
		})
	}
}

func TestCheckCommand(t *testing.T) {
	good := writeConfig(t, "intercept:\n  interfaces: [lan0]\npolicy:\n  default: splice\n")
	var out, errOut bytes.Buffer
	if code := dispatch([]string{"check", "--offline", "--config", good}, &out, &errOut); code != 0 {
		t.Fatalf("check of a good file exited %d: %s", code, errOut.String())
	}
	// Without --offline, check looks for the interfaces on this host.
	missing := writeConfig(t, "intercept:\n  interfaces: [sgnone0]\npolicy:\n  default: splice\n")
	errOut.Reset()
	if code := dispatch([]string{"check", "--config", missing}, &out, &errOut); code != 1 ||
		!strings.Contains(errOut.String(), `no interface "sgnone0"`) {
		t.Errorf("check with a missing interface: exit %d, %q", code, errOut.String())
	}
	// Extra roots are loaded as run would load them.
	roots := writeConfig(t, "intercept:\n  interfaces: [lan0]\nupstream:\n"+
		"  roots: [/nonexistent/roots.pem]\npolicy:\n  default: splice\n")
	errOut.Reset()
	if code := dispatch([]string{"check", "--offline", "--config", roots}, &out, &errOut); code != 1 ||
		!strings.Contains(errOut.String(), "/nonexistent/roots.pem") {
		t.Errorf("check with missing roots: exit %d, %q", code, errOut.String())
	}
	bad := writeConfig(t, "intercept:\n  interfaces: [lan0]\n  ports: [0]\n")
	out.Reset()
	errOut.Reset()
	if code := dispatch([]string{"check", "--config", bad}, &out, &errOut); code != 1 {
		t.Fatalf("check of a bad file exited %d, want 1", code)
	}
	if !strings.Contains(errOut.String(), bad+":3:") {
		t.Errorf("check output %q does not name %s:3", errOut.String(), bad)
	}
	// A bumping policy needs a usable CA, and check says which file is wrong.
	missingCA := writeConfig(t, "intercept:\n  interfaces: [lan0]\nca:\n  cert: /nonexistent/ca.crt\n  key: /nonexistent/ca.key\n")
	errOut.Reset()
	if code := dispatch([]string{"check", "--offline", "--config", missingCA}, &out, &errOut); code != 1 ||
		!strings.Contains(errOut.String(), "/nonexistent/ca.crt") ||
		!strings.Contains(errOut.String(), "snigate ca init") {
		t.Errorf("check with a missing CA exited %d: %q", code, errOut.String())
	}
}

func TestCAInitCommand(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	var out, errOut bytes.Buffer
	if code := dispatch([]string{"ca", "init", "--out", dir}, &out, &errOut); code != 0 {
		t.Fatalf("ca init exited %d: %s", code, errOut.String())
	}
	if code := dispatch([]string{"ca", "init", "--out", dir}, &out, &errOut); code != 1 {
		t.Errorf("a second ca init into %s exited %d, want 1 (never overwrite)", dir, code)
	}
	if code := dispatch([]string{"frobnicate"}, &out, &errOut); code != 2 {
		t.Errorf("unknown command exited %d, want 2", code)
	}
}

// Every command answers --help with its flags and exit code 0.
func TestHelpEverywhere(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"run", "--help"}, {"check", "--help"},
		{"status", "--help"}, {"reload", "--help"}, {"cleanup", "--help"}, {"ca", "init", "--help"},
		{"ca", "import", "--help"}, {"ca", "export", "--help"}, {"ca", "--help"},
		{"version"}} {
		var out, errOut bytes.Buffer
		if code := dispatch(args, &out, &errOut); code != 0 {
			t.Errorf("snigate %v exited %d: %s", args, code, errOut.String())
		}
		if out.Len()+errOut.Len() == 0 {
			t.Errorf("snigate %v printed nothing", args)
		}
	}
}

func TestStatusWithoutDaemon(t *testing.T) {
	var out, errOut bytes.Buffer
	sock := filepath.Join(t.TempDir(), "none.sock")
	if code := dispatch([]string{"status", "--control", sock}, &out, &errOut); code != 1 ||
		!strings.Contains(errOut.String(), "not running") {
		t.Errorf("status without a daemon: exit %d, %q", code, errOut.String())
	}
}

// A control path that names a regular file is refused, and the file kept.
func TestControlPathNotASocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notes.txt")
	os.WriteFile(path, []byte("keep me"), 0o644)
	if cs, err := listenControl(path, zap.NewNop()); err == nil {
		cs.close()
		t.Fatal("listenControl replaced a regular file")
	}
	if data, _ := os.ReadFile(path); string(data) != "keep me" {
		t.Errorf("the file at the control path changed: %q", data)
	}
}

// The README's configuration with every setting is one the daemon takes.
func TestReadmeConfig(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(readme), "\n```yaml\n")
	block, _, closed := strings.Cut(rest, "\n```\n")
	if !ok || !closed {
		t.Fatal("README has no ```yaml block")
	}
	cfg, err := LoadConfig(writeConfig(t, block))
	if err != nil {
		t.Fatalf("README configuration: %v", err)
	}
	if cfg.Intercept.Mark != bpf.DefaultMark || cfg.Intercept.Table != bpf.DefaultTable {
		t.Errorf("README mark %#x table %d, want the defaults %#x and %d",
			cfg.Intercept.Mark, cfg.Intercept.Table, bpf.DefaultMark, bpf.DefaultTable)
	}
}

// An unknown flag is reported once, with the usage, and exits 2.
func TestUnknownFlagReportedOnce(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := dispatch([]string{"check", "--bogus"}, &out, &errOut); code != 2 {
		t.Errorf("exit code %d, want 2", code)
	}
	all := out.String() + errOut.String()
	if n := strings.Count(all, "-bogus"); n != 1 {
		t.Errorf("the unknown flag is named %d times, want once:\n%s", n, all)
	}
	if !strings.Contains(all, "-config") {
		t.Errorf("no usage after the error:\n%s", all)
	}
}
