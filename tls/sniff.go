package tls

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"time"
)

// sniffTimeout bounds the wait for a client's first plaintext when no
// ALPN protocol was agreed, to tell HTTP/1.x from anything else.
const sniffTimeout = time.Second

// sniffedConn is a client connection whose first bytes were read ahead
// into r; reads drain r first.
type sniffedConn struct {
	*tls.Conn
	r *bufio.Reader
}

func (c *sniffedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// sniffHTTP1 waits up to sniffTimeout for the client's first plaintext and
// reports whether it starts an HTTP/1.x request. It returns the connection
// to go on reading the client from, which holds the bytes read ahead.
//
// LIMITATION: a protocol without ALPN in which the server speaks first has
// its greeting held back for up to sniffTimeout, then is relayed raw;
// watching the upstream during the wait would lift the delay.
func sniffHTTP1(conn *tls.Conn) (plainConn, bool) {
	br := bufio.NewReader(conn)
	conn.SetReadDeadline(time.Now().Add(sniffTimeout))
	_, err := br.Peek(1)
	conn.SetReadDeadline(time.Time{})
	if err != nil {
		// Nothing was read, and br would return err once more: go on with
		// the bare connection. A timed-out tls.Conn stays readable.
		return conn, false
	}
	first, _ := br.Peek(br.Buffered())
	return &sniffedConn{Conn: conn, r: br}, looksLikeRequestLine(first)
}

// looksLikeRequestLine reports whether b starts with an HTTP/1.x request
// line: method SP request-target SP HTTP-version CRLF (RFC 9112,
// Section 3). When b ends within the line, the method and the start of an
// origin-form, asterisk-form or absolute-form target must be there.
func looksLikeRequestLine(b []byte) bool {
	line, _, complete := bytes.Cut(b, []byte("\r\n"))
	method, rest, ok := bytes.Cut(line, []byte(" "))
	if !ok || !isMethod(method) || len(rest) == 0 {
		return false
	}
	if complete {
		const version = " HTTP/1.x"
		return len(rest) > len(version) &&
			bytes.HasPrefix(rest[len(rest)-len(version):], []byte(version[:len(version)-1]))
	}
	return rest[0] == '/' || rest[0] == '*' || bytes.HasPrefix(rest, []byte("http"))
}

// isMethod reports whether b is a plausible method: the registered ones
// and extensions (RFC 9110, Section 9) are short upper-case tokens.
func isMethod(b []byte) bool {
	if len(b) == 0 || len(b) > 20 {
		return false
	}
	for _, c := range b {
		if !('A' <= c && c <= 'Z' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}
