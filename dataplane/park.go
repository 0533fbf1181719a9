package dataplane

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// parker lets an idle relay direction wait for its source socket without a
// goroutine. A goroutine blocked in a read keeps its stack, at least a few
// KiB, for as long as the peer stays silent, and a gateway holds thousands
// of spliced tunnels (IAP SSH and RDP sessions) that are idle nearly all
// the time. A parked direction is instead one registration in a private
// epoll instance; when its socket becomes readable, or reports an error or
// hang-up, the parker starts a fresh goroutine for it.
//
// The epoll descriptor is itself pollable, so the parker waits in Go's
// poller like any socket and no thread is blocked in epoll_wait.
type parker struct {
	ep   *os.File
	epfd int

	mu      sync.Mutex
	next    uint64
	waiting map[uint64]*tunnelDir
	// broken is set when epoll_wait failed: nothing is parked any more.
	broken bool
}

// parkedDirections counts the relay directions parked right now, in the
// whole process, as the parker is.
var parkedDirections atomic.Int64

// ParkedDirections returns how many relay directions wait in the parker
// now: two for a spliced tunnel idle both ways.
func ParkedDirections() int64 { return parkedDirections.Load() }

// idleParker is the process's parker, made on first use. A nil parker (the
// epoll instance could not be made) means idle directions keep their
// goroutines, which costs memory but nothing else.
var idleParker = sync.OnceValue(func() *parker {
	p, err := newParker()
	if err != nil {
		return nil
	}
	go p.loop()
	return p
})

func newParker() (*parker, error) {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	// Non-blocking, so os.NewFile hands the descriptor to Go's poller.
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("set epoll %d non-blocking: %w", fd, err)
	}
	return &parker{
		ep:      os.NewFile(uintptr(fd), "snigate-idle-epoll"),
		epfd:    fd,
		waiting: map[uint64]*tunnelDir{},
	}, nil
}

// watch arms a one-shot readiness watch on d's source socket. It fails
// when the socket is already closed; the caller then keeps reading itself.
func (p *parker) watch(d *tunnelDir) error {
	op := unix.EPOLL_CTL_MOD
	p.mu.Lock()
	if p.broken {
		p.mu.Unlock()
		return fmt.Errorf("watch idle %s: epoll_wait failed before", d.name)
	}
	if d.parkID == 0 {
		// Registered before the watch is armed, so that fail, which
		// wakes everything registered, cannot miss it.
		p.next++
		d.parkID = p.next
		p.waiting[d.parkID] = d
		op = unix.EPOLL_CTL_ADD
	}
	p.mu.Unlock()
	// Level-triggered and one-shot: data that arrived before the watch
	// still wakes it, and it wakes exactly once per arming.
	ev := unix.EpollEvent{
		Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT,
		Fd:     int32(uint32(d.parkID)),
		Pad:    int32(uint32(d.parkID >> 32)),
	}
	var ctlErr error
	// Inside Control the descriptor cannot be closed and its number
	// reused, so the watch is on this socket and no other.
	err := d.raw.Control(func(fd uintptr) {
		ctlErr = unix.EpollCtl(p.epfd, op, int(fd), &ev)
	})
	if err == nil {
		err = ctlErr
	}
	if err != nil {
		if op == unix.EPOLL_CTL_ADD {
			// Not registered: the next park must add it again, not modify.
			p.forget(d)
			d.parkID = 0
		}
		return fmt.Errorf("watch idle %s: %w", d.name, err)
	}
	return nil
}

// forget drops d's registration. The kernel removes the watch itself when
// the socket closes; an event already read for it finds nothing here.
func (p *parker) forget(d *tunnelDir) {
	if d.parkID == 0 {
		return
	}
	p.mu.Lock()
	delete(p.waiting, d.parkID)
	p.mu.Unlock()
}

// loop wakes the directions whose sockets became ready, for the life of
// the process.
func (p *parker) loop() {
	raw, err := p.ep.SyscallConn()
	if err != nil {
		p.fail()
		return
	}
	events := make([]unix.EpollEvent, 256)
	for {
		var n int
		var waitErr error
		err := raw.Read(func(fd uintptr) bool {
			for {
				n, waitErr = unix.EpollWait(int(fd), events, 0)
				if waitErr != syscall.EINTR {
					break
				}
			}
			// Nothing ready: let the poller wait for the epoll
			// descriptor to become readable.
			return waitErr != nil || n > 0
		})
		if err == nil {
			err = waitErr
		}
		if err != nil {
			// Only a broken epoll descriptor gets here (it is never
			// closed). Idle tunnels must not hang on it.
			p.fail()
			return
		}
		for _, ev := range events[:n] {
			id := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
			p.mu.Lock()
			d := p.waiting[id]
			p.mu.Unlock()
			if d != nil {
				d.t.wake(d)
			}
		}
	}
}

// fail stops parking for good and wakes every parked direction, which then
// waits for its socket on its own goroutine.
func (p *parker) fail() {
	p.mu.Lock()
	p.broken = true
	parked := make([]*tunnelDir, 0, len(p.waiting))
	for _, d := range p.waiting {
		parked = append(parked, d)
	}
	p.mu.Unlock()
	for _, d := range parked {
		d.t.wake(d)
	}
}
