package dataplane

import (
	"bytes"
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzParseHello feeds arbitrary bytes to ParseHello. Beyond not panicking,
// each outcome must be self-consistent, must not change when more bytes
// follow, and must agree with crypto/tls whenever crypto/tls accepts it.
func FuzzParseHello(f *testing.F) {
	bins, _ := filepath.Glob(filepath.Join(helloCorpusDir, "*.bin"))
	for _, bin := range bins {
		f.Add(mustReadHello(f, filepath.Base(bin)))
	}
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Add([]byte{0x80, 0x2e, 0x01})
	f.Add(helloFields{exts: [][]byte{sniExt("a.example."), alpnExt("h2")}}.record())

	f.Fuzz(func(t *testing.T, raw []byte) {
		var h Hello
		err := ParseHello(raw, nil, &h)
		checkHelloOutcome(t, raw, &h, err)

		// A verdict depends only on the bytes it was made from: one more
		// byte may not turn it into another.
		if !errors.Is(err, ErrNeedMore) {
			var more Hello
			moreErr := ParseHello(append(bytes.Clone(raw), 0x16), nil, &more)
			if more.Class != h.Class || !bytes.Equal(more.ServerName, h.ServerName) ||
				(err == nil) != (moreErr == nil) {
				t.Fatalf("one more byte changed %v %q (%v) into %v %q (%v)",
					h.Class, h.ServerName, err, more.Class, more.ServerName, moreErr)
			}
		}

		compareWithCryptoTLS(t, raw)
	})
}

// checkHelloOutcome fails unless h and err form one of ParseHello's
// documented outcomes for raw.
func checkHelloOutcome(t *testing.T, raw []byte, h *Hello, err error) {
	t.Helper()
	if len(h.Raw) != len(raw) || len(raw) > 0 && &h.Raw[0] != &raw[0] {
		t.Fatal("Raw is not the input")
	}

	var he *HelloError
	switch {
	case errors.Is(err, ErrNeedMore):
		if h.Class != 0 || h.ServerName != nil || h.ALPN != nil {
			t.Fatalf("ErrNeedMore with %v %q %q", h.Class, h.ServerName, h.ALPN)
		}
	case err != nil:
		if !errors.As(err, &he) || !errors.Is(err, ErrMalformedHello) || h.Class != HelloMalformed {
			t.Fatalf("err %v (%T) with class %v", err, err, h.Class)
		}
		if he.Offset < 0 || he.Offset > len(raw) || len(err.Error()) > 300 {
			t.Fatalf("offset %d of %d bytes, message %d bytes: %v",
				he.Offset, len(raw), len(err.Error()), err)
		}
		if h.ServerName != nil || h.ALPN != nil {
			t.Fatalf("malformed with name %q ALPN %q", h.ServerName, h.ALPN)
		}
	case h.Class == HelloNamed:
		if !plausibleHostName(string(h.ServerName)) {
			t.Fatalf("named hello with host name %q", h.ServerName)
		}
	case h.Class == HelloNoSNI:
		if h.ServerName != nil {
			t.Fatalf("no_sni with name %q", h.ServerName)
		}
	case h.Class == HelloNotTLS:
		if raw[0] == recordTypeHandshake || raw[0] >= 0x80 ||
			h.ServerName != nil || h.ALPN != nil {
			t.Fatalf("not_tls for first byte %#02x", raw[0])
		}
	default:
		t.Fatalf("nil error with class %v", h.Class)
	}

	for _, proto := range h.ALPNProtocols() {
		if proto == "" {
			t.Fatal("empty ALPN protocol")
		}
	}
}

// plausibleHostName is a second, independent statement of the host name
// rule: dot-separated labels of 1 to 63 bytes from [A-Za-z0-9_-], at most
// 253 bytes in all, no trailing dot.
func plausibleHostName(name string) bool {
	if name == "" || len(name) > 253 {
		return false
	}
	const allowed = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
	for _, label := range strings.Split(name, ".") {
		if label == "" || len(label) > 63 || strings.Trim(label, allowed) != "" {
			return false
		}
	}
	return true
}
