package dataplane

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

// splice connects to the original destination, replays the bytes the
// dataplane read, and then relays both directions.
func (s *Server) splice(cn *conn, cfg *Config, hello []byte, release func()) {
	up, err := s.dial(cn, cfg)
	if err != nil {
		cn.err = err
		reset(cn.client)
		return
	}
	n, err := up.Write(hello)
	release()
	cn.up = int64(n)
	if err != nil {
		cn.err = fmt.Errorf("replay client hello to %s: %w", cn.dst, err)
		reset(cn.client)
		up.Close()
		return
	}
	up2, down, err := relay(s.ctx, cn.client, up, cfg.HalfCloseTimeout)
	cn.up += up2
	cn.down = down
	switch {
	case err == nil:
	case errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE):
		// Peers abort connections all the time (a client closing with
		// unread data sends a reset); the gateway did its part.
		cn.reason = err.Error()
	case errors.Is(err, os.ErrDeadlineExceeded):
		cn.reason = fmt.Sprintf("half-closed for longer than %v", cfg.HalfCloseTimeout)
	default:
		cn.err = err
	}
}

// relay copies both ways between client and upstream until both directions
// have ended, then closes both. *net.TCPConn.ReadFrom with a TCP source moves
// the bytes with splice(2) through a pipe, so the payload never enters user
// space. An EOF on one side is passed on as a half-close (FIN) to the other,
// which keeps protocols that half-close working; the other direction then
// has halfClose to finish, so a peer that never closes its side cannot hold
// the connection forever. An error on either side closes both, since the
// other direction then has no one to talk to, and so does ctx ending.
func relay(ctx context.Context, client, upstream *net.TCPConn,
	halfClose time.Duration) (up, down int64, err error) {
	var (
		wg       sync.WaitGroup
		once     sync.Once
		firstErr error
	)
	// fail closes both sides. A side closed from outside (shutdown after
	// the drain time) shows up as net.ErrClosed: it still ends the other
	// direction, which may be waiting on a silent peer, but is no error.
	fail := func(e error) {
		once.Do(func() {
			if !errors.Is(e, net.ErrClosed) {
				firstErr = e
			}
			client.Close()
			upstream.Close()
		})
	}
	// A shutdown past its drain time ends the relay from outside; closing
	// only the client would leave a direction blocked on a silent upstream.
	stop := context.AfterFunc(ctx, func() { fail(net.ErrClosed) })
	defer stop()
	wg.Add(1)
	go func() {
		defer wg.Done()
		down = pipe(upstream, client, "upstream to client", halfClose, fail)
	}()
	up = pipe(client, upstream, "client to upstream", halfClose, fail)
	wg.Wait()
	client.Close()
	upstream.Close()
	return up, down, firstErr
}

// pipe moves src to dst until EOF, then half-closes dst and gives the
// other direction, which reads from dst, halfClose to end.
func pipe(src, dst *net.TCPConn, dir string, halfClose time.Duration,
	fail func(error)) int64 {
	n, err := dst.ReadFrom(src)
	if err != nil {
		fail(fmt.Errorf("relay %s: %w", dir, err))
		return n
	}
	if err := dst.CloseWrite(); err != nil && !peerGone(err) {
		fail(fmt.Errorf("half-close %s: %w", dir, err))
	}
	dst.SetReadDeadline(time.Now().Add(halfClose))
	return n
}

// peerGone reports whether err only says that the other end has already
// closed or reset: passing on a FIN is then moot, not a failure.
func peerGone(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ENOTCONN) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET)
}
