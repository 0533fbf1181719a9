package dataplane

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/cryptobyte"
)

const helloCorpusDir = "testdata/hellos"

// corpusHello is one capture from testdata/hellos with the values its
// index.tsv row promises.
type corpusHello struct {
	file      string
	raw       []byte
	sni       string   // "" when the index says the hello has no SNI
	alpn      []string // nil when the index says "-"
	truncated bool     // the capture is cut short, so the index has no values
}

func (c corpusHello) class() HelloClass {
	if c.sni == "" {
		return HelloNoSNI
	}
	return HelloNamed
}

// loadHelloCorpus reads index.tsv and the capture each row names, and fails
// if a .bin file has no row.
func loadHelloCorpus(t testing.TB) []corpusHello {
	t.Helper()
	index, err := os.ReadFile(filepath.Join(helloCorpusDir, "index.tsv"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(index)), "\n")
	col := map[string]int{}
	for i, name := range strings.Split(lines[0], "\t") {
		col[name] = i
	}

	var corpus []corpusHello
	for _, line := range lines[1:] {
		f := strings.Split(line, "\t")
		c := corpusHello{file: f[col["file"]], raw: mustReadHello(t, f[col["file"]])}
		if size, _ := strconv.Atoi(f[col["bytes"]]); size != len(c.raw) {
			t.Fatalf("%s: index says %d bytes, file has %d", c.file, size, len(c.raw))
		}
		switch sni, alpn := f[col["sni"]], f[col["alpn"]]; {
		case strings.HasPrefix(sni, "n/a"):
			c.truncated = true
		default:
			if sni != "-" {
				c.sni = sni
			}
			if alpn != "-" {
				c.alpn = strings.Split(alpn, ",")
			}
		}
		corpus = append(corpus, c)
	}

	bins, _ := filepath.Glob(filepath.Join(helloCorpusDir, "*.bin"))
	if len(bins) != len(corpus) {
		t.Fatalf("%d .bin files but %d rows in index.tsv", len(bins), len(corpus))
	}
	return corpus
}

func mustReadHello(t testing.TB, file string) []byte {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(helloCorpusDir, file))
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// checkHello fails unless h and err are what c promises.
func checkHello(t *testing.T, c corpusHello, h *Hello, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("err = %v, want nil", err)
	}
	if h.Class != c.class() || string(h.ServerName) != c.sni {
		t.Errorf("got %v %q, want %v %q", h.Class, h.ServerName, c.class(), c.sni)
	}
	if got := h.ALPNProtocols(); !slices.Equal(got, c.alpn) {
		t.Errorf("ALPN = %q, want %q", got, c.alpn)
	}
	if !bytes.Equal(h.Raw, c.raw) {
		t.Errorf("Raw has %d bytes, want the %d sent", len(h.Raw), len(c.raw))
	}
}

// helloTestConn is a net.Conn serving data in reads of at most chunk bytes
// (all at once if chunk is 0), then io.EOF. It allocates nothing, so it can
// sit under testing.AllocsPerRun. Writes are discarded.
type helloTestConn struct {
	data     []byte
	chunk    int
	maxReads int // if > 0, reads beyond this many fail with errExtraRead
	off      int
	reads    int
}

var errExtraRead = errors.New("read after the hello was already classified")

var helloTestAddr net.Addr = &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 443}

func (c *helloTestConn) Read(p []byte) (int, error) {
	if c.maxReads > 0 && c.reads >= c.maxReads {
		return 0, errExtraRead
	}
	c.reads++
	if c.off == len(c.data) {
		return 0, io.EOF
	}
	n := len(p)
	if c.chunk > 0 {
		n = min(n, c.chunk)
	}
	n = copy(p[:n], c.data[c.off:])
	c.off += n
	return n, nil
}

func (c *helloTestConn) rewind()                            { c.off, c.reads = 0, 0 }
func (c *helloTestConn) Write(p []byte) (int, error)        { return len(p), nil }
func (c *helloTestConn) Close() error                       { return nil }
func (c *helloTestConn) LocalAddr() net.Addr                { return helloTestAddr }
func (c *helloTestConn) RemoteAddr() net.Addr               { return helloTestAddr }
func (c *helloTestConn) SetDeadline(t time.Time) error      { return nil }
func (c *helloTestConn) SetReadDeadline(t time.Time) error  { return nil }
func (c *helloTestConn) SetWriteDeadline(t time.Time) error { return nil }

func readTestHello(t *testing.T, c *helloTestConn, maxBytes int) (*Hello, error) {
	t.Helper()
	b := GetHelloBuffer()
	t.Cleanup(b.Release)
	h := new(Hello)
	return h, ReadHello(c, b, maxBytes, h)
}

// helloFields are the parts of a test ClientHello body. Nil fields get a
// plausible default, so each case states only what it breaks.
type helloFields struct {
	sessionID   []byte
	suites      []byte
	compression []byte
	exts        [][]byte // whole extensions: type, length and data
	noExts      bool     // end the body after legacy_compression_methods
	after       []byte   // bytes after the extensions block
}

func orDefault(b, def []byte) []byte {
	if b == nil {
		return def
	}
	return b
}

// message builds the handshake message, header included.
func (f helloFields) message() []byte {
	var b cryptobyte.Builder
	b.AddUint8(handshakeClientHello)
	b.AddUint24LengthPrefixed(func(b *cryptobyte.Builder) {
		b.AddUint16(0x0303)
		b.AddBytes(make([]byte, 32))
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) {
			b.AddBytes(orDefault(f.sessionID, bytes.Repeat([]byte{0xaa}, 32)))
		})
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
			b.AddBytes(orDefault(f.suites, []byte{0x13, 0x01, 0x13, 0x02}))
		})
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) {
			b.AddBytes(orDefault(f.compression, []byte{0}))
		})
		if !f.noExts {
			b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
				for _, e := range f.exts {
					b.AddBytes(e)
				}
			})
		}
		b.AddBytes(f.after)
	})
	return b.BytesOrPanic()
}

// record frames the message into one handshake record.
func (f helloFields) record() []byte { return helloRecords(f.message()) }

// helloRecords frames msg into handshake records with the given payload
// sizes; whatever is left goes into one last record.
func helloRecords(msg []byte, sizes ...int) []byte {
	var out []byte
	for _, n := range append(sizes, len(msg)) {
		n = min(n, len(msg))
		if n == 0 {
			break
		}
		out = append(out, recordTypeHandshake, 3, 1, byte(n>>8), byte(n))
		out = append(out, msg[:n]...)
		msg = msg[n:]
	}
	return out
}

func helloExt(typ uint16, data []byte) []byte {
	var b cryptobyte.Builder
	b.AddUint16(typ)
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(data) })
	return b.BytesOrPanic()
}

// sniExt builds a server_name extension; a name starting with "\x01" is sent
// with that name_type instead of host_name.
func sniExt(names ...string) []byte {
	var b cryptobyte.Builder
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
		for _, name := range names {
			typ := uint8(nameTypeHostName)
			if strings.HasPrefix(name, "\x01") {
				typ, name = 1, name[1:]
			}
			b.AddUint8(typ)
			b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(name)) })
		}
	})
	return helloExt(extensionServerName, b.BytesOrPanic())
}

func alpnExt(protos ...string) []byte {
	var b cryptobyte.Builder
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
		for _, p := range protos {
			b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(p)) })
		}
	})
	return helloExt(extensionALPN, b.BytesOrPanic())
}

func TestHelloClassString(t *testing.T) {
	want := map[HelloClass]string{
		HelloNamed: "named", HelloNoSNI: "no_sni", HelloNotTLS: "not_tls",
		HelloMalformed: "malformed", 0: "HelloClass(0)",
	}
	for c, s := range want {
		if c.String() != s {
			t.Errorf("HelloClass(%d).String() = %q, want %q", c, c.String(), s)
		}
	}
}

func TestParseHelloCorpus(t *testing.T) {
	for _, c := range loadHelloCorpus(t) {
		t.Run(c.file, func(t *testing.T) {
			var h Hello
			err := ParseHello(c.raw, make([]byte, 0, DefaultMaxHello), &h)
			if c.truncated {
				if !errors.Is(err, ErrNeedMore) || h.Class != 0 || h.ServerName != nil {
					t.Fatalf("got %v %q, err %v; want ErrNeedMore", h.Class, h.ServerName, err)
				}
				return
			}
			checkHello(t, c, &h, err)
		})
	}
}

// TestParseHelloSplitMatchesChromium checks that reassembling three records
// gives the same fields as the single-record original.
func TestParseHelloSplitMatchesChromium(t *testing.T) {
	var whole, split Hello
	if err := ParseHello(mustReadHello(t, "chromium.bin"), nil, &whole); err != nil {
		t.Fatal(err)
	}
	if err := ParseHello(mustReadHello(t, "synthetic-record-split-3.bin"), nil, &split); err != nil {
		t.Fatal(err)
	}
	if split.Class != whole.Class || !bytes.Equal(split.ServerName, whole.ServerName) ||
		!bytes.Equal(split.ALPN, whole.ALPN) {
		t.Errorf("split: %v %q %q; chromium: %v %q %q", split.Class, split.ServerName,
			split.ALPN, whole.Class, whole.ServerName, whole.ALPN)
	}
}

func TestReadHelloCorpus(t *testing.T) {
	for _, c := range loadHelloCorpus(t) {
		for _, chunk := range []int{0, 1, 7, 600} {
			t.Run(c.file+"/chunk="+strconv.Itoa(chunk), func(t *testing.T) {
				h, err := readTestHello(t, &helloTestConn{data: c.raw, chunk: chunk}, 0)
				if c.truncated {
					if !errors.Is(err, io.ErrUnexpectedEOF) ||
						!strings.Contains(err.Error(), "1053 bytes") {
						t.Fatalf("err = %v, want io.ErrUnexpectedEOF after 1053 bytes", err)
					}
					if !bytes.Equal(h.Raw, c.raw) {
						t.Errorf("Raw has %d bytes, want %d", len(h.Raw), len(c.raw))
					}
					return
				}
				checkHello(t, c, h, err)
			})
		}
	}
}

// TestParseHelloPrefixes checks that no strict prefix of a real hello yields
// a name, a class or an error other than ErrNeedMore.
func TestParseHelloPrefixes(t *testing.T) {
	scratch := make([]byte, 0, DefaultMaxHello)
	for _, c := range loadHelloCorpus(t) {
		t.Run(c.file, func(t *testing.T) {
			for n := range len(c.raw) {
				var h Hello
				err := ParseHello(c.raw[:n], scratch, &h)
				if !errors.Is(err, ErrNeedMore) || h.Class != 0 ||
					h.ServerName != nil || h.ALPN != nil {
					t.Fatalf("prefix of %d bytes: %v %q, err %v; want ErrNeedMore",
						n, h.Class, h.ServerName, err)
				}
			}
		})
	}
}

// TestReadHelloFirstByte checks that anything not starting like TLS is
// classified from the first byte, without a second read.
func TestReadHelloFirstByte(t *testing.T) {
	tests := []struct {
		name  string
		data  string
		class HelloClass
		err   error
	}{
		{"http", "GET / HTTP/1.1\r\nHost: example.test\r\n\r\n", HelloNotTLS, nil},
		{"ssh", "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n", HelloNotTLS, nil},
		{"nul", "\x00\x00\x00\x00", HelloNotTLS, nil},
		{"sslv2", "\x80\x2e\x01\x00\x02\x00\x15\x00\x00\x00\x10", HelloMalformed, ErrMalformedHello},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn := &helloTestConn{data: []byte(tt.data), chunk: 1, maxReads: 1}
			h, err := readTestHello(t, conn, 0)
			if h.Class != tt.class || !errors.Is(err, tt.err) || (tt.err == nil) != (err == nil) {
				t.Fatalf("got %v, err %v; want %v, err %v", h.Class, err, tt.class, tt.err)
			}
			if string(h.Raw) != tt.data[:1] {
				t.Errorf("Raw = %q, want only the first byte", h.Raw)
			}
			if err != nil && !strings.Contains(err.Error(), "sslv2 compatible hello") {
				t.Errorf("err = %v, want it to say sslv2 compatible hello", err)
			}
		})
	}
}

func TestReadHelloSeveralRecordsInOneRead(t *testing.T) {
	chromium := mustReadHello(t, "chromium.bin")
	split := mustReadHello(t, "synthetic-record-split-3.bin")
	if got := helloRecords(chromium[recordHeaderLen:], 662, 1292); !bytes.Equal(got, split) {
		t.Fatal("synthetic-record-split-3.bin is not chromium.bin framed as 662/1292/34")
	}
	tiny := helloRecords(chromium[recordHeaderLen:], slices.Repeat([]int{1}, 1987)...)

	for name, raw := range map[string][]byte{"split-3": split, "one-byte-records": tiny} {
		t.Run(name, func(t *testing.T) {
			h, err := readTestHello(t, &helloTestConn{data: raw, maxReads: 1}, 0)
			if err != nil || h.Class != HelloNamed || string(h.ServerName) != "tunnel.cloudproxy.app" {
				t.Fatalf("got %v %q, err %v", h.Class, h.ServerName, err)
			}
		})
	}
}

func TestReadHelloKeepsBytesAfterHello(t *testing.T) {
	earlyData := []byte("\x17\x03\x03\x00\x05hello")
	for _, file := range []string{"curl.bin", "synthetic-record-split-3.bin"} {
		t.Run(file, func(t *testing.T) {
			raw := append(mustReadHello(t, file), earlyData...)
			h, err := readTestHello(t, &helloTestConn{data: raw}, 0)
			if err != nil || h.Class != HelloNamed {
				t.Fatalf("got %v, err %v", h.Class, err)
			}
			if !bytes.Equal(h.Raw, raw) {
				t.Errorf("Raw has %d bytes, want all %d read", len(h.Raw), len(raw))
			}
		})
	}
}

func TestParseHelloValid(t *testing.T) {
	msg := helloFields{exts: [][]byte{sniExt("a.example"), alpnExt("h2")}}.message()
	tests := []struct {
		name string
		raw  []byte
		want HelloClass
		sni  string
		alpn []string
	}{
		{"trailing dot", helloFields{exts: [][]byte{sniExt("www.example.com.")}}.record(),
			HelloNamed, "www.example.com", nil},
		{"case kept", helloFields{exts: [][]byte{sniExt("WWW.Example.COM")}}.record(),
			HelloNamed, "WWW.Example.COM", nil},
		{"first host_name wins", helloFields{exts: [][]byte{sniExt("a.example", "b.example")}}.record(),
			HelloNamed, "a.example", nil},
		{"other name_type skipped",
			helloFields{exts: [][]byte{sniExt("\x01opaque", "a_b.example")}}.record(),
			HelloNamed, "a_b.example", nil},
		{"empty name list", helloFields{exts: [][]byte{sniExt()}}.record(), HelloNoSNI, "", nil},
		{"no extensions block", helloFields{noExts: true}.record(), HelloNoSNI, "", nil},
		{"empty extensions block", helloFields{}.record(), HelloNoSNI, "", nil},
		{"alpn only", helloFields{exts: [][]byte{alpnExt("h2", "http/1.1")}}.record(),
			HelloNoSNI, "", []string{"h2", "http/1.1"}},
		{"handshake header split", helloRecords(msg, 2, 1), HelloNamed, "a.example", []string{"h2"}},
		{"one-byte records", helloRecords(msg, slices.Repeat([]int{1}, len(msg))...),
			HelloNamed, "a.example", []string{"h2"}},
		{"max length name", helloFields{exts: [][]byte{sniExt(longName(4, 62))}}.record(),
			HelloNamed, longName(4, 62), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h Hello
			err := ParseHello(tt.raw, nil, &h)
			if err != nil || h.Class != tt.want || string(h.ServerName) != tt.sni {
				t.Fatalf("got %v %q, err %v; want %v %q", h.Class, h.ServerName, err, tt.want, tt.sni)
			}
			if got := h.ALPNProtocols(); !slices.Equal(got, tt.alpn) {
				t.Errorf("ALPN = %q, want %q", got, tt.alpn)
			}
			compareWithCryptoTLS(t, tt.raw)
		})
	}
}

// longName returns labels labels of size bytes each, joined by dots.
func longName(labels, size int) string {
	parts := make([]string, labels)
	for i := range parts {
		parts[i] = strings.Repeat(string(rune('a'+i)), size)
	}
	return strings.Join(parts, ".")
}

func TestParseHelloMalformed(t *testing.T) {
	valid := helloFields{exts: [][]byte{sniExt("a.example")}}
	msg := valid.message()
	withExts := func(exts ...[]byte) []byte { return helloFields{exts: exts}.record() }
	sni := func(names ...string) []byte { return withExts(sniExt(names...)) }
	overlong := helloRecords(msg)
	overlong[4] += 3 // the record now claims 3 bytes past the hello
	overlong = append(overlong, 0, 0, 0)

	tests := []struct {
		name   string
		raw    []byte
		field  string // must head the message
		detail string // must appear in the message
	}{
		{"sslv2", []byte{0x80}, "record header at offset 0", "sslv2 compatible hello"},
		{"record type in the middle", append(helloRecords(msg[:20]), 0x14, 3, 3, 0, 1, 1),
			"record header at offset 25", "content type 20 is not handshake"},
		{"record version", []byte{0x16, 0x02, 0x00},
			"record header at offset 0", "version 0x0200 is not TLS"},
		{"record too long", []byte{0x16, 3, 1, 0x40, 0x01},
			"record length at offset 3", "length 16385 exceeds 16384"},
		{"empty record", []byte{0x16, 3, 1, 0, 0},
			"record length at offset 3", "empty handshake record"},
		{"not client_hello", []byte{0x16, 3, 3, 0, 4, 2},
			"handshake type at offset 5", "type 2 is not client_hello"},
		{"record runs past hello", overlong, "record length at offset 3", "record runs 3 bytes past"},
		{"short body", helloRecords([]byte{1, 0, 0, 10, 3, 3, 0, 0, 0, 0, 0, 0, 0, 0}),
			"random at offset 11", "needs 32 bytes, 8 remain"},
		{"session id too long", helloFields{sessionID: make([]byte, 33)}.record(),
			"legacy_session_id at offset 43", "length 33 exceeds 32"},
		{"odd cipher_suites", helloFields{suites: []byte{0x13, 0x01, 0x13}}.record(),
			"cipher_suites", "length 3 is not a positive even number"},
		{"no cipher_suites", helloFields{suites: []byte{}}.record(),
			"cipher_suites", "length 0 is not a positive even number"},
		{"no compression", helloFields{compression: []byte{}}.record(),
			"legacy_compression_methods", "empty list"},
		{"bytes after extensions", helloFields{after: []byte{0}}.record(),
			"client_hello at offset 86", "1 bytes follow the extensions"},
		{"duplicate extension", withExts(helloExt(0x2b, []byte{2, 3, 4}), sniExt("a.example"),
			helloExt(0x2b, []byte{2, 3, 4})), "extension 0x002b", "repeats an earlier extension"},
		{"duplicate server_name", withExts(sniExt("a.example"), sniExt("b.example")),
			"server_name extension", "repeats an earlier extension"},
		{"too many extensions", withExts(manyExts(65)...), "extensions", "more than 64 extensions"},
		{"extension length", helloFields{exts: [][]byte{{0, 0x17, 0, 9, 1}}}.record(),
			"extension 0x0017 at offset 88", "length 9 exceeds 1 remaining bytes"},
		{"bad SNI list length", withExts(helloExt(0, append([]byte{0x01, 0x2c}, make([]byte, 12)...))),
			"server_name extension at offset 90", "length 300 exceeds 12 remaining bytes"},
		{"empty server_name extension", withExts(helloExt(0, nil)),
			"server_name extension", "needs a 2-byte length, 0 bytes remain"},
		{"bytes after server_name_list", withExts(helloExt(0, []byte{0, 0, 7})),
			"server_name extension", "1 bytes follow server_name_list"},
		{"bad host_name length", withExts(helloExt(0, []byte{0, 5, 0, 0, 50, 'a', 'b'})),
			"server_name entry", "length 50 exceeds 2 remaining bytes"},
		{"space in host name", sni("exa mple.com"), "server_name host_name at offset 95",
			`byte 0x20 not allowed at index 3 of "exa mple.com"`},
		{"non-ascii host name", sni("bücher.example"),
			"server_name host_name", "byte 0xc3 not allowed"},
		{"nul in host name", sni("a.example\x00.evil"),
			"server_name host_name", `"a.example\x00.evil"`},
		{"empty host name", sni(""), "server_name host_name", "empty host name"},
		{"lone dot", sni("."), "server_name host_name", "empty host name"},
		{"two trailing dots", sni("a.example.."), "server_name host_name", "empty label at index 10"},
		{"empty label", sni("a..example"), "server_name host_name", "empty label at index 2"},
		{"leading dot", sni(".example"), "server_name host_name", "empty label at index 0"},
		{"name too long", sni(longName(4, 63)), "server_name host_name", "length 255 exceeds 253"},
		{"label too long", sni(longName(1, 64)), "server_name host_name", "label longer than 63 bytes"},
		{"long name quoted short", sni(strings.Repeat("a ", 200)), "server_name host_name", `a "...`},
		{"empty alpn list", withExts(helloExt(16, []byte{0, 0})),
			"alpn extension", "empty protocol_name_list"},
		{"empty alpn protocol", withExts(alpnExt("h2", "")),
			"alpn protocol_name", "empty protocol name"},
		{"bad alpn length", withExts(helloExt(16, []byte{0, 3, 5, 'h', '2'})),
			"alpn protocol_name", "length 5 exceeds 2 remaining bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h Hello
			err := ParseHello(tt.raw, nil, &h)
			var he *HelloError
			if !errors.Is(err, ErrMalformedHello) || !errors.As(err, &he) || h.Class != HelloMalformed {
				t.Fatalf("got %v, err %v; want HelloMalformed", h.Class, err)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, tt.field) || !strings.Contains(msg, tt.detail) {
				t.Errorf("err = %q, want %q ... %q", msg, tt.field, tt.detail)
			}
			if h.ServerName != nil || h.ALPN != nil || !bytes.Equal(h.Raw, tt.raw) {
				t.Errorf("malformed hello kept ServerName %q ALPN %q, Raw %d bytes",
					h.ServerName, h.ALPN, len(h.Raw))
			}
			if len(err.Error()) > 200 {
				t.Errorf("err is %d bytes long; wire strings must be cut short", len(err.Error()))
			}
		})
	}
}

func manyExts(n int) [][]byte {
	exts := make([][]byte, n)
	for i := range exts {
		exts[i] = helloExt(uint16(0x1000+i), nil)
	}
	return exts
}

// TestHelloErrorOffset checks that offsets point into Raw even when the
// field sits in a later record of a reassembled message.
func TestHelloErrorOffset(t *testing.T) {
	chromium := mustReadHello(t, "chromium.bin")
	name := bytes.Index(chromium, []byte("tunnel.cloudproxy.app"))
	bad := bytes.Clone(chromium)
	bad[name+20] = '!' // last byte of the name, in record 3 once split
	msg := bad[recordHeaderLen:]

	tests := []struct {
		name string
		raw  []byte
		want int
	}{
		{"one record", bad, name},
		{"three records", helloRecords(msg, 662, 1292), name + recordHeaderLen},
		{"one-byte records", helloRecords(msg, slices.Repeat([]int{1}, len(msg))...),
			(name-recordHeaderLen)*(recordHeaderLen+1) + recordHeaderLen},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h Hello
			var he *HelloError
			if err := ParseHello(tt.raw, nil, &h); !errors.As(err, &he) {
				t.Fatalf("err = %v, want a *HelloError", err)
			}
			if he.Field != "server_name host_name" || he.Offset != tt.want {
				t.Errorf("got %s at offset %d, want server_name host_name at %d",
					he.Field, he.Offset, tt.want)
			}
			if tt.raw[he.Offset] != 't' {
				t.Errorf("Raw[%d] = %q, want the first byte of the name", he.Offset, tt.raw[he.Offset])
			}
		})
	}
}

func TestReadHelloTooLarge(t *testing.T) {
	// A hello claiming 16 MiB, sent as full-size records.
	huge := append([]byte{handshakeClientHello, 0xff, 0xff, 0xff}, make([]byte, 3*maxRecordPayload)...)
	curl := mustReadHello(t, "curl.bin")

	tests := []struct {
		name     string
		raw      []byte
		maxBytes int
		wantRaw  int
	}{
		{"bound below curl", curl, 300, 300},
		{"endless records", helloRecords(huge, maxRecordPayload, maxRecordPayload), 0, DefaultMaxHello},
		{"bound above buffer", helloRecords(huge, maxRecordPayload, maxRecordPayload),
			1 << 20, DefaultMaxHello},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := readTestHello(t, &helloTestConn{data: tt.raw, chunk: 1000}, tt.maxBytes)
			bound := strconv.Itoa(tt.wantRaw)
			if !errors.Is(err, ErrHelloTooLarge) || !strings.Contains(err.Error(), bound) {
				t.Fatalf("err = %v, want ErrHelloTooLarge naming %d", err, tt.wantRaw)
			}
			if len(h.Raw) != tt.wantRaw {
				t.Errorf("Raw has %d bytes, want %d", len(h.Raw), tt.wantRaw)
			}
		})
	}

	t.Run("exactly at bound", func(t *testing.T) {
		h, err := readTestHello(t, &helloTestConn{data: curl, chunk: 100}, len(curl))
		if err != nil || h.Class != HelloNamed {
			t.Fatalf("got %v, err %v; want a named hello", h.Class, err)
		}
	})
}

func TestReadHelloUnexpectedEOF(t *testing.T) {
	tests := []struct {
		name string
		raw  []byte
		want string
	}{
		{"nothing sent", nil, "after 0 bytes"},
		{"record header only", []byte{0x16, 3, 1, 1, 0}, "after 5 bytes"},
		{"truncated chromium", mustReadHello(t, "synthetic-truncated-mid-extensions.bin"),
			"after 1053 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := readTestHello(t, &helloTestConn{data: tt.raw, chunk: 64}, 0)
			if !errors.Is(err, io.ErrUnexpectedEOF) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want io.ErrUnexpectedEOF %s", err, tt.want)
			}
			if len(h.Raw) != len(tt.raw) {
				t.Errorf("Raw has %d bytes, want %d", len(h.Raw), len(tt.raw))
			}
		})
	}
}

func TestReadHelloDeadline(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close() })

	sent := mustReadHello(t, "curl.bin")[:100]
	if _, err := client.Write(sent); err != nil {
		t.Fatal(err)
	}
	if err := server.SetReadDeadline(time.Now().Add(200 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}

	var h Hello
	b := GetHelloBuffer()
	defer b.Release()
	err = ReadHello(server, b, 0, &h)
	if !errors.Is(err, os.ErrDeadlineExceeded) || !strings.Contains(err.Error(), "after 100 bytes") {
		t.Fatalf("err = %v, want os.ErrDeadlineExceeded after 100 bytes", err)
	}
	if !bytes.Equal(h.Raw, sent) {
		t.Errorf("Raw has %d bytes, want the %d sent", len(h.Raw), len(sent))
	}
}

func TestHelloAllocs(t *testing.T) {
	for _, file := range []string{"curl.bin", "openssl-noservername.bin", "chromium.bin",
		"synthetic-record-split-3.bin"} {
		raw := mustReadHello(t, file)
		t.Run(file, func(t *testing.T) {
			assertNoAllocs(t, raw, 0)
			assertNoAllocs(t, raw, 1)
		})
	}
	t.Run("not tls", func(t *testing.T) { assertNoAllocs(t, []byte("GET / HTTP/1.1\r\n\r\n"), 0) })
}

func assertNoAllocs(t *testing.T, raw []byte, chunk int) {
	t.Helper()
	var h Hello
	var err error
	conn := &helloTestConn{data: raw, chunk: chunk}
	scratch := make([]byte, 0, DefaultMaxHello)

	read := testing.AllocsPerRun(100, func() {
		conn.rewind()
		b := GetHelloBuffer()
		err = ReadHello(conn, b, 0, &h)
		b.Release()
	})
	if err != nil || read != 0 {
		t.Errorf("chunk %d: ReadHello: %v allocations per run, err %v", chunk, read, err)
	}

	parse := testing.AllocsPerRun(100, func() { err = ParseHello(raw, scratch, &h) })
	if err != nil || parse != 0 {
		t.Errorf("ParseHello: %v allocations per run, err %v", parse, err)
	}
}

func TestALPNProtocols(t *testing.T) {
	h := Hello{ALPN: []byte("\x02h2\x08http/1.1")}
	if got := h.ALPNProtocols(); !slices.Equal(got, []string{"h2", "http/1.1"}) {
		t.Errorf("ALPNProtocols() = %q", got)
	}
	if got := (&Hello{}).ALPNProtocols(); got != nil {
		t.Errorf("ALPNProtocols() of no ALPN = %q, want nil", got)
	}
}

// TestParseHelloMatchesCryptoTLS hands every capture to crypto/tls as well:
// it must accept each one and see the same name and ALPN list.
func TestParseHelloMatchesCryptoTLS(t *testing.T) {
	for _, c := range loadHelloCorpus(t) {
		if c.truncated {
			continue
		}
		t.Run(c.file, func(t *testing.T) {
			if cryptoTLSHello(c.raw) == nil {
				t.Fatal("crypto/tls refused a real capture")
			}
			compareWithCryptoTLS(t, c.raw)
		})
	}
}

var errStopHandshake = errors.New("stop after the client hello")

// cryptoTLSHello runs a crypto/tls server over raw and returns the
// ClientHelloInfo it saw, or nil if it refused the bytes before that.
func cryptoTLSHello(raw []byte) *tls.ClientHelloInfo {
	var seen *tls.ClientHelloInfo
	cfg := &tls.Config{GetConfigForClient: func(chi *tls.ClientHelloInfo) (*tls.Config, error) {
		seen = chi
		return nil, errStopHandshake
	}}
	_ = tls.Server(&helloTestConn{data: raw}, cfg).Handshake()
	return seen
}

// stricterThanCryptoTLS lists the fields of checks crypto/tls does not make
// before it asks for a config: record version and empty or overlong records,
// vector bounds from RFC 8446 it leaves to later steps, host name bytes, and
// the extension count limit.
var stricterThanCryptoTLS = map[string]bool{
	"record header":              true,
	"record length":              true,
	"legacy_session_id":          true,
	"cipher_suites":              true,
	"legacy_compression_methods": true,
	"server_name host_name":      true,
	"extensions":                 true,
}

// compareWithCryptoTLS fails if crypto/tls accepts raw as a ClientHello and
// ParseHello disagrees about it, other than by a stricter check.
func compareWithCryptoTLS(t testing.TB, raw []byte) {
	t.Helper()
	chi := cryptoTLSHello(raw)
	if chi == nil {
		return
	}
	var h Hello
	err := ParseHello(raw, nil, &h)
	var he *HelloError
	switch {
	case errors.As(err, &he) && stricterThanCryptoTLS[he.Field]:
		return
	case err != nil || (h.Class != HelloNamed && h.Class != HelloNoSNI):
		t.Fatalf("crypto/tls accepted the hello, ParseHello: %v, err %v", h.Class, err)
	}
	if string(h.ServerName) != chi.ServerName {
		t.Errorf("ServerName = %q, crypto/tls saw %q", h.ServerName, chi.ServerName)
	}
	if got := h.ALPNProtocols(); !slices.Equal(got, chi.SupportedProtos) {
		t.Errorf("ALPN = %q, crypto/tls saw %q", got, chi.SupportedProtos)
	}
}

func BenchmarkParseHello(b *testing.B) {
	for _, file := range []string{"curl.bin", "openssl-tls12.bin", "chromium.bin",
		"synthetic-record-split-3.bin"} {
		raw := mustReadHello(b, file)
		b.Run(file, func(b *testing.B) {
			var h Hello
			scratch := make([]byte, 0, DefaultMaxHello)
			b.ReportAllocs()
			b.SetBytes(int64(len(raw)))
			for b.Loop() {
				if err := ParseHello(raw, scratch, &h); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkHelloPeek compares ParseHello with the common alternative of
// peeking through crypto/tls: a tls.Server handshake over a replay of the
// bytes, stopped in GetConfigForClient. The crypto_tls runs also time the
// same number of ParseHello calls and report the ratio as x_parse.
func BenchmarkHelloPeek(b *testing.B) {
	for _, file := range []string{"openssl-tls12.bin", "chromium.bin", "go-default.bin"} {
		raw := mustReadHello(b, file)
		b.Run(file+"/snigate", func(b *testing.B) {
			var h Hello
			b.ReportAllocs()
			for b.Loop() {
				if err := ParseHello(raw, nil, &h); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(file+"/crypto_tls", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if cryptoTLSHello(raw) == nil {
					b.Fatal("crypto/tls refused the hello")
				}
			}
			b.StopTimer()
			perPeek := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
			var h Hello
			start := time.Now()
			for range b.N {
				ParseHello(raw, nil, &h)
			}
			perParse := float64(time.Since(start).Nanoseconds()) / float64(b.N)
			b.ReportMetric(perPeek/perParse, "x_parse")
		})
	}
}
