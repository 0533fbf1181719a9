// Package deploy holds no Go code: its test checks the files that install a
// gateway (install.sh, the systemd unit, the example configuration).
package deploy

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func buildSnigate(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "snigate")
	out, err := exec.Command("go", "build", "-o", bin, "../cmd/snigate").CombinedOutput()
	if err != nil {
		t.Fatalf("build snigate: %v\n%s", err, out)
	}
	return bin
}

func install(t *testing.T, root, bin string, args ...string) string {
	t.Helper()
	full := append([]string{"./install.sh", "--root", root, "--binary", bin}, args...)
	out, err := exec.Command("bash", full...).CombinedOutput()
	if err != nil {
		t.Fatalf("install.sh %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// install.sh into a scratch root twice: everything lands, the second run
// keeps the CA and the edited configuration, and the unit verifies.
func TestInstallTwice(t *testing.T) {
	bin := buildSnigate(t)
	root := t.TempDir()
	out := install(t, root, bin)
	for _, f := range []string{"usr/local/bin/snigate", "etc/systemd/system/snigate.service",
		"etc/snigate/snigate.yaml", "etc/sysctl.d/90-snigate.conf",
		"var/lib/snigate/ca.crt", "var/lib/snigate/ca.key", "var/lib/snigate/ca.der"} {
		if _, err := os.Stat(filepath.Join(root, f)); err != nil {
			t.Errorf("install.sh did not write %s: %v", f, err)
		}
	}
	if !strings.Contains(out, "certutil -addstore root") || !strings.Contains(out, "custom_ca_certs_file") {
		t.Errorf("install.sh output lacks the client trust instructions:\n%s", out)
	}
	key := filepath.Join(root, "var/lib/snigate/ca.key")
	if fi, _ := os.Stat(key); fi == nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("ca.key mode is not 0600")
	}
	caBefore, _ := os.ReadFile(filepath.Join(root, "var/lib/snigate/ca.crt"))
	conf := filepath.Join(root, "etc/snigate/snigate.yaml")
	edited := []byte("# edited by the operator\nintercept:\n  interfaces: [eth1]\n")
	os.WriteFile(conf, edited, 0o644)

	out = install(t, root, bin)
	caAfter, _ := os.ReadFile(filepath.Join(root, "var/lib/snigate/ca.crt"))
	if !bytes.Equal(caBefore, caAfter) {
		t.Error("a second install.sh replaced the CA")
	}
	if got, _ := os.ReadFile(conf); !bytes.Equal(got, edited) {
		t.Error("a second install.sh replaced the operator's configuration")
	}
	if _, err := os.Stat(conf + ".example"); err != nil {
		t.Errorf("no snigate.yaml.example next to the kept configuration: %v", err)
	}

	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Fatal("systemd-analyze not installed (Debian package systemd)")
	}
	// verify resolves the unit's dependencies (sysinit.target, ...) and
	// its binaries inside the root: give it the system's own units.
	units := filepath.Join(root, "usr/lib/systemd")
	os.MkdirAll(units, 0o755)
	if out, err := exec.Command("cp", "-a", "/usr/lib/systemd/system", units).CombinedOutput(); err != nil {
		t.Fatalf("copy system units: %v\n%s", err, out)
	}
	verify, err := exec.Command("systemd-analyze", "verify", "--root="+root,
		"/etc/systemd/system/snigate.service").CombinedOutput()
	if err != nil || len(bytes.TrimSpace(verify)) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, verify)
	}
}

// The example configuration passes "snigate check" once a CA exists.
func TestExampleConfigChecks(t *testing.T) {
	bin := buildSnigate(t)
	root := t.TempDir()
	install(t, root, bin)
	conf, _ := os.ReadFile(filepath.Join(root, "etc/snigate/snigate.yaml"))
	conf = bytes.ReplaceAll(conf, []byte("/var/lib/snigate"), []byte(root+"/var/lib/snigate"))
	path := filepath.Join(root, "check.yaml")
	os.WriteFile(path, conf, 0o644)
	// The example names lan0, which this host need not have.
	out, err := exec.Command(bin, "check", "--offline", "--config", path).CombinedOutput()
	if err != nil {
		t.Fatalf("snigate check of the example: %v\n%s", err, out)
	}
}

// A Squid site's CA, one PEM file with the key and the certificate, is
// taken over unchanged, so clients keep trusting it.
func TestInstallImportsSquidCA(t *testing.T) {
	bin := buildSnigate(t)
	squid := filepath.Join(t.TempDir(), "squid-ca.pem")
	certDER := writeSquidCA(t, squid)

	root := t.TempDir()
	install(t, root, bin, "--import-ca", squid)
	got, _ := os.ReadFile(filepath.Join(root, "var/lib/snigate/ca.der"))
	if !bytes.Equal(got, certDER) {
		t.Error("the imported CA certificate differs from Squid's")
	}
}

func writeSquidCA(t *testing.T, path string) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(7),
		Subject:               pkix.Name{CommonName: "Office Squid CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(365 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	var buf bytes.Buffer
	pem.Encode(&buf, &pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return der
}

// An import that cannot work leaves nothing installed; one that would
// replace an installed CA with another is refused, not ignored.
func TestInstallImportErrors(t *testing.T) {
	bin := buildSnigate(t)
	dir := t.TempDir()
	squid := filepath.Join(dir, "squid-ca.pem")
	writeSquidCA(t, squid)

	// A certificate-only file fails before anything is written.
	certOnly := filepath.Join(dir, "cert-only.pem")
	data, _ := os.ReadFile(squid)
	i := bytes.Index(data, []byte("-----BEGIN CERTIFICATE"))
	os.WriteFile(certOnly, data[i:], 0o600)
	root := t.TempDir()
	out, err := exec.Command("bash", "./install.sh", "--root", root, "--binary", bin,
		"--import-ca", certOnly).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "--import-key") {
		t.Errorf("certificate-only import: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(root, "usr/local/bin/snigate")); err == nil {
		t.Error("a failed import still installed the binary")
	}

	// A second CA over an installed one is refused.
	install(t, root, bin)
	out, err = exec.Command("bash", "./install.sh", "--root", root, "--binary", bin,
		"--import-ca", squid).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "different CA") {
		t.Errorf("import over an installed CA: %v\n%s", err, out)
	}
}
