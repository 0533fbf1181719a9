package dataplane

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"

	"golang.org/x/crypto/cryptobyte"
)

// HelloClass is what the first bytes of a connection turned out to be.
type HelloClass uint8

const (
	// HelloNamed is a TLS ClientHello with a server name.
	HelloNamed HelloClass = iota + 1
	// HelloNoSNI is a TLS ClientHello without server_name, or with an empty
	// name list.
	HelloNoSNI
	// HelloNotTLS means the first byte is not a TLS handshake record (0x16):
	// HTTP, SSH, anything else.
	HelloNotTLS
	// HelloMalformed claims to be TLS but is not a well-formed ClientHello.
	HelloMalformed
)

// String returns the short snake_case label used in logs and metrics.
func (c HelloClass) String() string {
	switch c {
	case HelloNamed:
		return "named"
	case HelloNoSNI:
		return "no_sni"
	case HelloNotTLS:
		return "not_tls"
	case HelloMalformed:
		return "malformed"
	}
	return "HelloClass(" + strconv.Itoa(int(c)) + ")"
}

// Hello is the result of reading a ClientHello. Byte slices point into the
// pooled buffer (zero copy) and are valid until the buffer is released.
type Hello struct {
	Class HelloClass
	// ServerName is the first host_name entry with one trailing dot removed,
	// in the case the client sent. It is not lowercased because it may alias
	// Raw, which is replayed upstream verbatim.
	ServerName []byte
	// ALPN is the body of the ALPN protocol_name_list (after its 2-byte
	// length), nil if the extension is absent.
	ALPN []byte
	// Raw is every byte read from the client so far: all hello records plus
	// anything that arrived after them. Replay it upstream verbatim.
	Raw []byte
}

// ALPNProtocols returns the protocols offered in h.ALPN, in client order.
// It allocates; the splice path should use h.ALPN directly.
func (h *Hello) ALPNProtocols() []string {
	var protos []string
	list := cryptobyte.String(h.ALPN)
	for !list.Empty() {
		var proto cryptobyte.String
		if !list.ReadUint8LengthPrefixed(&proto) {
			break // ParseHello has validated the list; only a hand-built Hello gets here
		}
		protos = append(protos, string(proto))
	}
	return protos
}

var (
	// ErrNeedMore reports that raw is a valid but incomplete prefix of a
	// ClientHello.
	ErrNeedMore = errors.New("need more bytes")
	// ErrHelloTooLarge reports that the size bound was reached before a
	// complete ClientHello arrived.
	ErrHelloTooLarge = errors.New("client hello too large")
	// ErrMalformedHello reports bytes that claim to be TLS but are not a
	// well-formed ClientHello. It is always wrapped by a *HelloError.
	ErrMalformedHello = errors.New("malformed client hello")
)

// HelloError says which field of a malformed ClientHello is at fault and
// where. It wraps ErrMalformedHello.
type HelloError struct {
	Field  string // wire field, e.g. "server_name extension"
	Offset int    // where the field starts, as a byte offset into Hello.Raw
	Detail string // what is wrong with it; wire bytes quoted and cut short
}

// Error formats e as "<field> at offset <n>: <detail>".
func (e *HelloError) Error() string {
	return e.Field + " at offset " + strconv.Itoa(e.Offset) + ": " + e.Detail
}

// Unwrap returns ErrMalformedHello, so callers can branch with errors.Is.
func (e *HelloError) Unwrap() error { return ErrMalformedHello }

// DefaultMaxHello is the size bound on the raw bytes of a hello. Real hellos
// with a post-quantum key share are about 2 KiB; 16 KiB leaves room for
// larger ones without letting a client make us buffer without limit.
const DefaultMaxHello = 16 << 10

const (
	recordTypeHandshake    = 22
	recordHeaderLen        = 5
	handshakeHeaderLen     = 4
	handshakeClientHello   = 1
	maxRecordPayload       = 1 << 14 // TLSPlaintext.length bound, RFC 8446, Section 5.1
	extensionServerName    = 0
	extensionALPN          = 16
	nameTypeHostName       = 0
	maxSessionID           = 32
	maxHostName            = 253
	maxLabel               = 63
	maxQuoted              = 64
	maxExtensions          = 64
	whyBadHostNameByte     = "byte not allowed"
	sslv2CompatibleReason  = "sslv2 compatible hello"
	sslv2CompatibleHighBit = 0x80
)

// HelloBuffer holds the bytes of one ClientHello while it is read and parsed.
// Get one with GetHelloBuffer and give it back with Release.
type HelloBuffer struct {
	raw [DefaultMaxHello]byte
	// msg is where a handshake message spanning several records is
	// reassembled. Almost every client sends one record, so it is made on
	// first need and then stays with the pooled buffer.
	msg []byte
}

var helloBuffers = sync.Pool{New: func() any { return new(HelloBuffer) }}

// GetHelloBuffer returns a buffer from a pool. It is not safe for concurrent
// use; release it once the Hello that points into it is no longer needed.
func GetHelloBuffer() *HelloBuffer { return helloBuffers.Get().(*HelloBuffer) }

// Release returns b to the pool. Slices of any Hello read into b become
// invalid.
func (b *HelloBuffer) Release() { helloBuffers.Put(b) }

// scratch returns the reassembly area, making it when raw holds more than its
// first record: only then can the message span records.
func (b *HelloBuffer) scratch(raw []byte) []byte {
	if b.msg == nil && len(raw) > recordHeaderLen && raw[0] == recordTypeHandshake &&
		len(raw) > recordHeaderLen+recordLen(raw) {
		b.msg = make([]byte, 0, len(b.raw))
	}
	return b.msg
}

// ReadHello reads from c into b until one whole ClientHello handshake message
// has arrived (across any number of reads and TLS records), then classifies
// and parses it into h.
//
// maxBytes bounds the raw bytes; 0, a negative value or more than the buffer
// holds means DefaultMaxHello. The caller sets the read deadline on c
// beforehand; a timeout comes back as the conn's error, wrapped.
//
// It returns nil for HelloNamed, HelloNoSNI and HelloNotTLS; HelloNotTLS is
// decided from the first byte, without waiting for more. For HelloMalformed
// it returns a *HelloError (wrapping ErrMalformedHello). If the client closes
// early the error wraps io.ErrUnexpectedEOF; if the bound is reached first it
// wraps ErrHelloTooLarge. In every case h.Raw holds what was read.
func ReadHello(c net.Conn, b *HelloBuffer, maxBytes int, h *Hello) error {
	limit := maxBytes
	if limit <= 0 || limit > len(b.raw) {
		limit = len(b.raw)
	}
	*h = Hello{Raw: b.raw[:0]}

	for n := 0; ; {
		k, rerr := c.Read(b.raw[n:limit])
		n += k
		if k > 0 {
			err := ParseHello(b.raw[:n], b.scratch(b.raw[:n]), h)
			if !errors.Is(err, ErrNeedMore) {
				return err
			}
		}

		switch {
		case errors.Is(rerr, io.EOF):
			return fmt.Errorf("client closed after %d bytes of an incomplete hello: %w",
				n, io.ErrUnexpectedEOF)
		case rerr != nil:
			return fmt.Errorf("read client hello after %d bytes: %w", n, rerr)
		case n == limit:
			return fmt.Errorf("%w: no complete hello within %d bytes", ErrHelloTooLarge, limit)
		}
	}
}

// ParseHello parses raw (TLS records as received) without I/O. It returns
// ErrNeedMore when raw is a valid but incomplete prefix of a ClientHello, and
// otherwise what ReadHello returns for the same bytes.
//
// A message that spans records is reassembled into scratch; capacity
// len(raw) always suffices, and with less ParseHello allocates. h.ServerName
// and h.ALPN point into raw (one record) or scratch (several records).
func ParseHello(raw, scratch []byte, h *Hello) error {
	*h = Hello{Raw: raw}
	if len(raw) == 0 {
		return ErrNeedMore
	}

	switch {
	case raw[0] == recordTypeHandshake:
	case raw[0]&sslv2CompatibleHighBit != 0:
		// An SSLv2-compatible hello opens with a 2-byte length whose high
		// bit is set. It is meant as TLS, but it cannot carry extensions,
		// so there is no name to route on: refuse it rather than pass it
		// on as some other protocol.
		h.Class = HelloMalformed
		return &HelloError{Field: "record header", Offset: 0, Detail: sslv2CompatibleReason}
	default:
		h.Class = HelloNotTLS
		return nil
	}

	msg, end, err := handshakeMessage(raw, scratch)
	if err == nil {
		p := helloParser{raw: raw, end: end, msg: msg}
		err = p.parse(h)
	}
	if err != nil && !errors.Is(err, ErrNeedMore) {
		*h = Hello{Class: HelloMalformed, Raw: raw}
	}
	return err
}

// recordLen returns the length field of the record header at the start of b,
// which must hold at least recordHeaderLen bytes.
func recordLen(b []byte) int { return int(b[3])<<8 | int(b[4]) }

// recordHeader checks the record header at raw[off:] and returns its payload
// length. Each header byte is checked as soon as it arrives, so a stream that
// turns out not to be TLS is refused without waiting for more.
func recordHeader(raw []byte, off int) (int, error) {
	hdr := raw[off:]
	if len(hdr) > 0 && hdr[0] != recordTypeHandshake {
		// Change cipher spec, alerts and early data may only follow the
		// complete hello; anything else is not TLS.
		return 0, &HelloError{Field: "record header", Offset: off,
			Detail: fmt.Sprintf("content type %d is not handshake (22)", hdr[0])}
	}
	// Every version from SSL 3.0 to TLS 1.3 keeps major version 3 in the
	// record header; anything else after 0x16 is another protocol.
	if len(hdr) > 2 && hdr[1] != 3 {
		return 0, &HelloError{Field: "record header", Offset: off,
			Detail: fmt.Sprintf("version 0x%02x%02x is not TLS", hdr[1], hdr[2])}
	}
	if len(hdr) < recordHeaderLen {
		return 0, ErrNeedMore
	}

	n := recordLen(hdr)
	switch {
	case n == 0:
		// RFC 8446, Section 5.1 forbids zero-length handshake fragments, so
		// no TLS stack we could pass the connection to would accept them.
		return 0, &HelloError{Field: "record length", Offset: off + 3,
			Detail: "empty handshake record"}
	case n > maxRecordPayload:
		return 0, &HelloError{Field: "record length", Offset: off + 3,
			Detail: fmt.Sprintf("length %d exceeds %d", n, maxRecordPayload)}
	}
	return n, nil
}

// handshakeMessage walks the records in raw and returns the first handshake
// message, header included, once all of it has arrived, plus the offset in
// raw just past the record that completes it.
func handshakeMessage(raw, scratch []byte) (cryptobyte.String, int, error) {
	var hdr [handshakeHeaderLen]byte
	done, total := 0, -1 // message bytes in earlier records; message length once known

	for off := 0; ; {
		n, err := recordHeader(raw, off)
		if err != nil {
			return nil, 0, err
		}

		payload := raw[off+recordHeaderLen : min(off+recordHeaderLen+n, len(raw))]
		if done == 0 && len(payload) > 0 && payload[0] != handshakeClientHello {
			return nil, 0, &HelloError{Field: "handshake type", Offset: off + recordHeaderLen,
				Detail: fmt.Sprintf("type %d is not client_hello (1)", payload[0])}
		}
		if done < handshakeHeaderLen {
			copy(hdr[done:], payload)
			if total < 0 && done+len(payload) >= handshakeHeaderLen {
				total = handshakeHeaderLen + (int(hdr[1])<<16 | int(hdr[2])<<8 | int(hdr[3]))
			}
		}

		// The hello precedes a key change in TLS 1.3, so it must end on a
		// record boundary (RFC 8446, Section 5.1). No client sends another
		// handshake message before the server answers.
		end := off + recordHeaderLen + n
		if total >= 0 && done+n > total {
			return nil, 0, &HelloError{Field: "record length", Offset: off + 3,
				Detail: fmt.Sprintf("record runs %d bytes past the %d-byte client_hello",
					done+n-total, total)}
		}
		if end > len(raw) {
			return nil, 0, ErrNeedMore
		}
		if done+n == total {
			return assemble(raw, end, scratch), end, nil
		}
		done += n
		off = end
	}
}

// assemble returns the handshake message carried by the records in raw[:end].
// A message in one record is returned in place; only a message spanning
// records is copied, into scratch.
func assemble(raw []byte, end int, scratch []byte) cryptobyte.String {
	if recordHeaderLen+recordLen(raw) == end {
		return raw[recordHeaderLen:end]
	}
	msg := scratch[:0]
	for off := 0; off < end; {
		n := recordLen(raw[off:])
		msg = append(msg, raw[off+recordHeaderLen:off+recordHeaderLen+n]...)
		off += recordHeaderLen + n
	}
	return msg
}

// helloParser reads one complete ClientHello message and turns a failed read
// into a HelloError that names the field and its offset in raw.
type helloParser struct {
	raw []byte            // records as received
	end int               // offset in raw past the records carrying msg
	msg cryptobyte.String // the handshake message, header included
}

// offset returns where s starts, as an offset into raw. s must be a reslice
// of p.msg; cryptobyte only ever cuts strings from the front or shortens
// them, so the difference in capacity is the position within msg.
func (p *helloParser) offset(s cryptobyte.String) int {
	k := cap(p.msg) - cap(s)
	off := 0
	for off < p.end {
		n := recordLen(p.raw[off:])
		if k < n {
			return off + recordHeaderLen + k
		}
		k -= n
		off += recordHeaderLen + n
	}
	return off + k
}

// fail returns a HelloError for field, located where at starts.
func (p *helloParser) fail(field string, at cryptobyte.String, detail string) error {
	return &HelloError{Field: field, Offset: p.offset(at), Detail: detail}
}

// short reports a fixed-size field cut off by the end of its enclosing vector.
func (p *helloParser) short(s cryptobyte.String, field string, size int) error {
	return p.fail(field, s, fmt.Sprintf("needs %d bytes, %d remain", size, len(s)))
}

// lengthError explains why a width-byte length prefix at the start of s could
// not be read or points past the end of its enclosing vector.
func (p *helloParser) lengthError(s cryptobyte.String, width int, field string) error {
	if len(s) < width {
		return p.fail(field, s,
			fmt.Sprintf("needs a %d-byte length, %d bytes remain", width, len(s)))
	}
	n := 0
	for _, c := range s[:width] {
		n = n<<8 | int(c)
	}
	return p.fail(field, s, fmt.Sprintf("length %d exceeds %d remaining bytes", n, len(s)-width))
}

// vec8 reads an 8-bit length-prefixed vector from s into out.
func (p *helloParser) vec8(s, out *cryptobyte.String, field string) error {
	t := *s
	if !t.ReadUint8LengthPrefixed(out) {
		return p.lengthError(*s, 1, field)
	}
	*s = t
	return nil
}

// vec16 reads a 16-bit length-prefixed vector from s into out.
func (p *helloParser) vec16(s, out *cryptobyte.String, field string) error {
	t := *s
	if !t.ReadUint16LengthPrefixed(out) {
		return p.lengthError(*s, 2, field)
	}
	*s = t
	return nil
}

// parse reads the ClientHello body (RFC 8446, Section 4.1.2) into h.
func (p *helloParser) parse(h *Hello) error {
	s := p.msg[handshakeHeaderLen:]
	var sessionID, suites, compression, extensions cryptobyte.String

	if !s.Skip(2) {
		return p.short(s, "legacy_version", 2)
	}
	if !s.Skip(32) {
		return p.short(s, "random", 32)
	}

	at := s
	if err := p.vec8(&s, &sessionID, "legacy_session_id"); err != nil {
		return err
	}
	if len(sessionID) > maxSessionID {
		return p.fail("legacy_session_id", at,
			fmt.Sprintf("length %d exceeds %d", len(sessionID), maxSessionID))
	}

	at = s
	if err := p.vec16(&s, &suites, "cipher_suites"); err != nil {
		return err
	}
	if len(suites) == 0 || len(suites)%2 != 0 {
		return p.fail("cipher_suites", at,
			fmt.Sprintf("length %d is not a positive even number", len(suites)))
	}

	at = s
	if err := p.vec8(&s, &compression, "legacy_compression_methods"); err != nil {
		return err
	}
	if len(compression) == 0 {
		return p.fail("legacy_compression_methods", at, "empty list")
	}

	// Hellos from before TLS 1.2 may end here, without any extensions.
	if s.Empty() {
		h.Class = HelloNoSNI
		return nil
	}
	if err := p.vec16(&s, &extensions, "extensions"); err != nil {
		return err
	}
	if !s.Empty() {
		return p.fail("client_hello", s, fmt.Sprintf("%d bytes follow the extensions", len(s)))
	}
	return p.extensions(extensions, h)
}

// extensions walks the extension list, rejecting repeats (RFC 8446, Section
// 4.2) and reading server_name and ALPN.
func (p *helloParser) extensions(exts cryptobyte.String, h *Hello) error {
	// LIMITATION: a hello with more than maxExtensions extensions is not
	// parsed, because repeats are found in a fixed array and no RFC caps the
	// count; it is refused as malformed, which no real client (under 30
	// extensions) triggers; an 8 KiB bitmap of extension types kept in
	// HelloBuffer would lift it.
	var seen [maxExtensions]uint16
	count := 0

	for !exts.Empty() {
		at := exts
		var typ uint16
		var data cryptobyte.String
		if !exts.ReadUint16(&typ) {
			return p.short(exts, "extension type", 2)
		}
		t := exts
		if !t.ReadUint16LengthPrefixed(&data) {
			return p.lengthError(exts, 2, extensionName(typ))
		}
		exts = t

		for _, prev := range seen[:count] {
			if prev == typ {
				return p.fail(extensionName(typ), at, "repeats an earlier extension")
			}
		}
		if count == len(seen) {
			return p.fail("extensions", at, fmt.Sprintf("more than %d extensions", maxExtensions))
		}
		seen[count] = typ
		count++

		var err error
		switch typ {
		case extensionServerName:
			err = p.serverName(data, h)
		case extensionALPN:
			err = p.alpn(data, h)
		}
		if err != nil {
			return err
		}
	}

	h.Class = HelloNoSNI
	if h.ServerName != nil {
		h.Class = HelloNamed
	}
	return nil
}

// extensionName names an extension type in error messages.
func extensionName(typ uint16) string {
	switch typ {
	case extensionServerName:
		return "server_name extension"
	case extensionALPN:
		return "alpn extension"
	}
	return fmt.Sprintf("extension 0x%04x", typ)
}

// serverName reads the server_name extension (RFC 6066, Section 3). The
// first host_name entry wins; later entries are only checked for framing.
// An empty list leaves h.ServerName nil, so the hello counts as no-SNI.
func (p *helloParser) serverName(ext cryptobyte.String, h *Hello) error {
	var list cryptobyte.String
	if err := p.vec16(&ext, &list, "server_name extension"); err != nil {
		return err
	}
	if !ext.Empty() {
		return p.fail("server_name extension", ext,
			fmt.Sprintf("%d bytes follow server_name_list", len(ext)))
	}

	for !list.Empty() {
		nameType := list[0]
		list = list[1:]
		var name cryptobyte.String
		if err := p.vec16(&list, &name, "server_name entry"); err != nil {
			return err
		}
		if nameType == nameTypeHostName && h.ServerName == nil {
			if err := p.hostName(name, h); err != nil {
				return err
			}
		}
	}
	return nil
}

// hostName checks a host_name and stores it in h without one trailing dot.
// Bytes a DNS host name cannot hold would reach policy matching and logs, so
// such a hello is refused instead.
func (p *helloParser) hostName(name cryptobyte.String, h *Hello) error {
	trimmed := name
	if n := len(trimmed); n > 0 && trimmed[n-1] == '.' {
		trimmed = trimmed[:n-1]
	}

	i, why := hostNameProblem(trimmed)
	if why == "" {
		h.ServerName = trimmed
		return nil
	}
	if why == whyBadHostNameByte {
		why = fmt.Sprintf("byte %#02x not allowed", name[i])
	}
	return p.fail("server_name host_name", name,
		fmt.Sprintf("%s at index %d of %s", why, i, quoteWire(name)))
}

// hostNameProblem returns the index of the first problem in name and what it
// is, or "" if name is a plausible host name: letters, digits, '-', '_' and
// dots between non-empty labels of at most 63 bytes, at most 253 bytes in all.
func hostNameProblem(name []byte) (int, string) {
	if len(name) == 0 {
		return 0, "empty host name"
	}
	if len(name) > maxHostName {
		return maxHostName, fmt.Sprintf("length %d exceeds %d", len(name), maxHostName)
	}

	label := 0 // start of the current label
	for i, c := range name {
		switch {
		case c == '.':
			if i == label {
				return i, "empty label"
			}
			label = i + 1
		case !hostNameByte(c):
			return i, whyBadHostNameByte
		case i-label >= maxLabel:
			return i, fmt.Sprintf("label longer than %d bytes", maxLabel)
		}
	}
	if label == len(name) {
		return label, "empty label"
	}
	return 0, ""
}

// hostNameByte reports whether c may appear in a host name label.
func hostNameByte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '-' || c == '_'
}

// alpn reads the ALPN extension (RFC 7301, Section 3.1) into h.ALPN.
func (p *helloParser) alpn(ext cryptobyte.String, h *Hello) error {
	var list cryptobyte.String
	if err := p.vec16(&ext, &list, "alpn extension"); err != nil {
		return err
	}
	if !ext.Empty() {
		return p.fail("alpn extension", ext,
			fmt.Sprintf("%d bytes follow protocol_name_list", len(ext)))
	}
	if list.Empty() {
		return p.fail("alpn extension", list, "empty protocol_name_list")
	}

	h.ALPN = list
	for !list.Empty() {
		at := list
		var proto cryptobyte.String
		if err := p.vec8(&list, &proto, "alpn protocol_name"); err != nil {
			return err
		}
		if proto.Empty() {
			return p.fail("alpn protocol_name", at, "empty protocol name")
		}
	}
	return nil
}

// quoteWire quotes bytes from the wire for an error message, cut to maxQuoted
// bytes so a hostile client cannot flood the logs.
func quoteWire(b []byte) string {
	if len(b) > maxQuoted {
		return fmt.Sprintf("%q...", b[:maxQuoted])
	}
	return fmt.Sprintf("%q", b)
}
