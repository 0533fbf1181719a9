package tls

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"
)

// plainConn is the plaintext side of a TLS connection: a *tls.Conn, or
// one whose first bytes were peeked at (*sniffedConn).
type plainConn interface {
	net.Conn
	// CloseWrite sends close_notify.
	CloseWrite() error
	// NetConn returns the connection TLS runs on.
	NetConn() net.Conn
}

// relay copies plaintext between the client (down) and upstream (up) until
// both directions end, and returns the bytes copied each way. The end of
// one direction is passed on as a half-close, and the other direction then
// has halfClose to end; any other failure ends both.
func relay(down, up plainConn, halfClose time.Duration) (bytesUp, bytesDown int64, err error) {
	r := &relayState{conns: [2]plainConn{down, up}, halfClose: halfClose}
	var wg sync.WaitGroup
	wg.Go(func() { bytesUp = r.copy(up, down, "client to upstream") })
	wg.Go(func() { bytesDown = r.copy(down, up, "upstream to client") })
	wg.Wait()
	return bytesUp, bytesDown, r.err
}

// relayState holds what the two directions of a relay share.
type relayState struct {
	conns     [2]plainConn
	halfClose time.Duration
	once      sync.Once
	err       error
}

// copy moves src's plaintext to dst and returns the bytes written.
func (r *relayState) copy(dst, src plainConn, direction string) int64 {
	n, err := io.Copy(dst, src)
	if err == nil {
		// Protocols that half-close (send a request, shut the write side,
		// read the answer) need the end of stream passed on, and the other
		// direction left running.
		if err = closeWrite(dst); peerGone(err) {
			err = nil
		}
		// The other direction reads from dst; a peer that never closes
		// its side must not hold the connection forever.
		dst.NetConn().SetReadDeadline(time.Now().Add(r.halfClose))
	}
	if err != nil {
		r.fail(fmt.Errorf("relay %s: %w", direction, err))
	}
	return n
}

// fail records the relay's first error and closes both connections: the
// other direction may be blocked on a peer that will not send again.
func (r *relayState) fail(err error) {
	r.once.Do(func() {
		r.err = err
		// The raw connections, because tls.Conn.Close would first try to
		// send close_notify to a peer that may not be reading.
		r.conns[0].NetConn().Close()
		r.conns[1].NetConn().Close()
	})
}

// peerGone reports whether err only says that the peer has already closed
// or reset: passing on the end of stream is then moot, not a failure.
func peerGone(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ENOTCONN) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET)
}

// closeWrite sends close_notify on c and, where the transport allows, a
// TCP FIN, so the peer sees the end of stream however it reads.
func closeWrite(c plainConn) error {
	if err := c.CloseWrite(); err != nil {
		return fmt.Errorf("close write: %w", err)
	}
	if cw, ok := c.NetConn().(interface{ CloseWrite() error }); ok {
		if err := cw.CloseWrite(); err != nil {
			return fmt.Errorf("close write: %w", err)
		}
	}
	return nil
}
