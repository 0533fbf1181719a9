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

	"golang.org/x/sys/unix"
)

// splice connects to the original destination, replays the bytes the
// dataplane read, and then starts relaying both directions; the relay
// finishes cn when it ends.
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
	cn.relaying = true
	relay(s.ctx, cn.client, up, cfg.HalfCloseTimeout, idleAfter,
		func(up, down int64, err error) {
			cn.up += up
			cn.down = down
			switch {
			case err == nil:
			case errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE):
				// Peers abort connections all the time (a client closing
				// with unread data sends a reset); the gateway did its part.
				cn.reason = err.Error()
			case errors.Is(err, os.ErrDeadlineExceeded):
				cn.reason = fmt.Sprintf("half-closed for longer than %v", cfg.HalfCloseTimeout)
			default:
				cn.err = err
			}
			s.finish(cn)
		})
}

// idleAfter is how long a relay direction waits for data on its own
// goroutine before parking. Parking and waking cost a few microseconds,
// so even an interactive session that pauses between keystrokes loses
// nothing by it, while a burst of new tunnels (clients reconnecting after
// a network change) frees its goroutine stacks quickly: in the bench, 2000
// tunnels opened at once grew the RSS by about 3 KiB each with a second
// here and by none with a quarter.
const idleAfter = 250 * time.Millisecond

// relay copies both ways between client and upstream until both directions
// have ended, then closes both and calls done with the bytes moved each
// way and the error that ended the relay, if any. It returns at once.
//
// *net.TCPConn.ReadFrom with a TCP source moves the bytes with splice(2)
// through a pipe, so the payload never enters user space. A direction
// that moved nothing for parkAfter gives up its goroutine and its pipe and
// parks until its socket is readable again (see parker).
//
// An EOF on one side is passed on as a half-close (FIN) to the other,
// which keeps protocols that half-close working; the other direction then
// has halfClose to finish, so a peer that never closes its side cannot
// hold the connection forever. An error on either side closes both, since
// the other direction then has no one to talk to, and so does ctx ending.
func relay(ctx context.Context, client, upstream *net.TCPConn,
	halfClose, parkAfter time.Duration, done func(up, down int64, err error)) {
	t := &tunnel{halfClose: halfClose, parkAfter: parkAfter, done: done, open: 2}
	t.dirs[0] = tunnelDir{t: t, src: client, dst: upstream, name: "client to upstream"}
	t.dirs[1] = tunnelDir{t: t, src: upstream, dst: client, name: "upstream to client"}
	rawClient, err1 := client.SyscallConn()
	rawUp, err2 := upstream.SyscallConn()
	if err1 == nil && err2 == nil {
		t.dirs[0].raw, t.dirs[1].raw = rawClient, rawUp
		for i := range t.dirs {
			// Urgent data in line, so that pastUrgentMark can read it.
			t.dirs[i].raw.Control(func(fd uintptr) {
				unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_OOBINLINE, 1)
			})
		}
		// Without both descriptors nothing parks: the directions then
		// wait on their own goroutines.
		t.parker = idleParker()
	}
	// A shutdown past its drain time ends the relay from outside; closing
	// only the client would leave a direction waiting on a silent upstream.
	t.stopCtx = context.AfterFunc(ctx, func() { t.fail(net.ErrClosed) })
	go t.dirs[0].run()
	go t.dirs[1].run()
}

// tunnel is the state of one relay: two directions, each either running
// on its own goroutine, parked, or ended.
type tunnel struct {
	halfClose, parkAfter time.Duration
	parker               *parker
	done                 func(up, down int64, err error)
	stopCtx              func() bool

	mu        sync.Mutex
	dirs      [2]tunnelDir
	open      int // directions not ended
	failed    bool
	err       error
	halfTimer *time.Timer
}

type dirState uint8

const (
	dirRunning dirState = iota
	dirParked
	dirEnded
)

// tunnelDir is one direction of a tunnel: src is read, dst written.
type tunnelDir struct {
	t        *tunnel
	src, dst *net.TCPConn
	raw      syscall.RawConn // src's, for the parker and pastUrgentMark
	name     string
	parkID   uint64 // the parker's name for it; 0 before its first park
	state    dirState
	n        int64
}

// run moves src to dst while data flows. Only one goroutine runs a
// direction at a time: the relay starts it, or the parker restarts it
// after a park.
func (d *tunnelDir) run() {
	t := d.t
	for {
		var deadline time.Time
		if t.parker != nil {
			deadline = time.Now().Add(t.parkAfter)
		}
		d.src.SetReadDeadline(deadline)
		// A read deadline only ends the splice while its pipe is empty,
		// so a timeout never strands bytes in it.
		n, err := d.dst.ReadFrom(d.src)
		d.n += n
		if err == nil {
			var more bool
			if more, err = d.pastUrgentMark(); err == nil && more {
				continue
			}
		}
		switch {
		case err == nil:
			t.eof(d)
			return
		case errors.Is(err, os.ErrDeadlineExceeded) && !deadline.IsZero():
			if n == 0 && t.park(d) {
				return
			}
		default:
			t.fail(fmt.Errorf("relay %s: %w", d.name, err))
			t.end(d)
			return
		}
	}
}

// pastUrgentMark tells a real end of src from TCP's urgent mark, where
// splice(2) stops just as at the end (the kernel's tcp_read_sock never reads
// past the mark), which would cut the rest of the stream off. With
// SO_OOBINLINE the urgent byte is ordinary data to recv(2): it reads what
// is there, writes it to dst and reports true, and the splice can go on.
// It reports false at the real end, and also when there is nothing to
// read, so that a socket whose option could not be set never spins.
func (d *tunnelDir) pastUrgentMark() (bool, error) {
	if d.raw == nil {
		return false, nil
	}
	var buf [512]byte
	var n int
	var recvErr error
	err := d.raw.Read(func(fd uintptr) bool {
		for {
			n, _, recvErr = unix.Recvfrom(int(fd), buf[:], unix.MSG_DONTWAIT)
			if recvErr != unix.EINTR {
				return true
			}
		}
	})
	switch {
	case err != nil:
		return false, fmt.Errorf("relay %s: %w", d.name, err)
	case recvErr == unix.EAGAIN:
		return false, nil
	case recvErr != nil:
		return false, fmt.Errorf("relay %s: %w", d.name, recvErr)
	case n == 0:
		return false, nil
	}
	if _, err := d.dst.Write(buf[:n]); err != nil {
		return false, fmt.Errorf("relay %s: %w", d.name, err)
	}
	d.n += int64(n)
	return true, nil
}

// park hands d to the parker. It reports false, and d keeps running, when
// the tunnel is failing (the next read then sees the closed socket) or the
// watch could not be armed.
func (t *tunnel) park(d *tunnelDir) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.failed {
		return false
	}
	d.state = dirParked
	if err := t.parker.watch(d); err != nil {
		d.state = dirRunning
		return false
	}
	parkedDirections.Add(1)
	return true
}

// wake restarts a parked direction on a fresh goroutine, whose stack starts
// small again.
func (t *tunnel) wake(d *tunnelDir) {
	t.mu.Lock()
	parked := d.state == dirParked
	if parked {
		d.state = dirRunning
		parkedDirections.Add(-1)
	}
	t.mu.Unlock()
	if parked {
		go d.run()
	}
}

// eof passes src's end on to dst as a half-close and gives the other
// direction halfClose to end too.
func (t *tunnel) eof(d *tunnelDir) {
	if err := d.dst.CloseWrite(); err != nil && !peerGone(err) {
		t.fail(fmt.Errorf("half-close %s: %w", d.name, err))
	}
	t.mu.Lock()
	// Both directions can reach their EOF at once; one timer is enough.
	if t.open == 2 && !t.failed && t.halfTimer == nil {
		other := &t.dirs[0]
		if other == d {
			other = &t.dirs[1]
		}
		t.halfTimer = time.AfterFunc(t.halfClose, func() {
			t.fail(fmt.Errorf("relay %s: %w", other.name, os.ErrDeadlineExceeded))
		})
	}
	t.mu.Unlock()
	t.end(d)
}

// fail ends the tunnel: it closes both sides, which ends running
// directions, and ends parked ones itself. The first error is the one
// reported; net.ErrClosed, which the relay's context ending passes and a
// running direction sees once the sockets are closed, is no error. Only
// the context ends a relay from outside: a parked direction whose socket
// is closed by someone else never hears of it.
func (t *tunnel) fail(err error) {
	t.mu.Lock()
	if t.failed {
		t.mu.Unlock()
		return
	}
	t.failed = true
	if !errors.Is(err, net.ErrClosed) {
		t.err = err
	}
	last := false
	for i := range t.dirs {
		if t.dirs[i].state == dirParked {
			parkedDirections.Add(-1)
			last = t.endLocked(&t.dirs[i])
		}
	}
	t.mu.Unlock()
	t.dirs[0].src.Close()
	t.dirs[1].src.Close()
	if last {
		t.finish()
	}
}

// end marks a running direction ended.
func (t *tunnel) end(d *tunnelDir) {
	t.mu.Lock()
	last := t.endLocked(d)
	t.mu.Unlock()
	if last {
		t.finish()
	}
}

// endLocked ends d and reports whether it was the last direction open.
// t.mu must be held.
func (t *tunnel) endLocked(d *tunnelDir) bool {
	d.state = dirEnded
	t.open--
	if t.open == 0 {
		// A fail from now on (the context, the half-close timer) comes
		// too late to be the reason the tunnel ended.
		t.failed = true
	}
	return t.open == 0
}

// finish runs once, after both directions ended.
func (t *tunnel) finish() {
	t.mu.Lock()
	err := t.err
	t.mu.Unlock()
	t.stopCtx()
	if t.halfTimer != nil {
		t.halfTimer.Stop()
	}
	t.dirs[0].src.Close()
	t.dirs[1].src.Close()
	if t.parker != nil {
		t.parker.forget(&t.dirs[0])
		t.parker.forget(&t.dirs[1])
	}
	t.done(t.dirs[0].n, t.dirs[1].n, err)
}

// peerGone reports whether err only says that the other end has already
// closed or reset: passing on a FIN is then moot, not a failure.
func peerGone(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ENOTCONN) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET)
}
