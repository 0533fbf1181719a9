package dataplane

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"runtime/metrics"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// countingRelay starts a relay whose done records every call, so a test
// can check it ran exactly once.
func countingRelay(ctx context.Context, client, upstream *net.TCPConn,
	halfClose, parkAfter time.Duration) (chan relayResult, *atomic.Int32) {
	var calls atomic.Int32
	done := make(chan relayResult, 2)
	relay(ctx, client, upstream, halfClose, parkAfter, func(up, down int64, err error) {
		calls.Add(1)
		done <- relayResult{up, down, err}
	})
	return done, &calls
}

func waitRelay(t *testing.T, done chan relayResult, calls *atomic.Int32, within time.Duration) relayResult {
	t.Helper()
	select {
	case r := <-done:
		time.Sleep(20 * time.Millisecond) // room for a second, wrong call
		if n := calls.Load(); n != 1 {
			t.Errorf("done called %d times", n)
		}
		return r
	case <-time.After(within):
		t.Fatalf("relay still running after %v", within)
		return relayResult{}
	}
}

// waitParked waits until the relay's goroutines are gone, i.e. both
// directions parked.
func waitParked(t *testing.T, before int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		t.Fatalf("%d goroutines, want %d: the directions did not park", n, before)
	}
}

// A peer that resets while both directions are parked wakes its direction,
// which fails the tunnel with the reset; the other side is closed too.
func TestParkedPeerReset(t *testing.T) {
	idleParker()
	clientApp, clientSide := tcpPair(t)
	upstreamSide, serverApp := tcpPair(t)
	before := runtime.NumGoroutine()
	done, calls := countingRelay(context.Background(), clientSide, upstreamSide, time.Minute, 5*time.Millisecond)
	waitParked(t, before)
	serverApp.SetLinger(0)
	serverApp.Close()
	r := waitRelay(t, done, calls, 5*time.Second)
	if !errors.Is(r.err, syscall.ECONNRESET) {
		t.Errorf("relay error %v, want a reset", r.err)
	}
	clientApp.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := clientApp.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("client read after the upstream reset: %v, want the connection closed", err)
	}
}

// EOFs that arrive while a direction is parked are passed on, each way in
// turn, and the tunnel ends cleanly with the right byte counts.
func TestParkedHalfCloses(t *testing.T) {
	idleParker()
	clientApp, clientSide := tcpPair(t)
	upstreamSide, serverApp := tcpPair(t)
	before := runtime.NumGoroutine()
	done, calls := countingRelay(context.Background(), clientSide, upstreamSide, time.Minute, 5*time.Millisecond)
	waitParked(t, before)
	clientApp.Write([]byte("abc"))
	clientApp.CloseWrite()
	serverApp.SetReadDeadline(time.Now().Add(5 * time.Second))
	if got, err := io.ReadAll(serverApp); string(got) != "abc" || err != nil {
		t.Fatalf("server read %q, %v", got, err)
	}
	time.Sleep(50 * time.Millisecond) // the other direction parks again
	serverApp.Write([]byte("hello"))
	time.Sleep(50 * time.Millisecond)
	serverApp.CloseWrite()
	clientApp.SetReadDeadline(time.Now().Add(5 * time.Second))
	if got, err := io.ReadAll(clientApp); string(got) != "hello" || err != nil {
		t.Fatalf("client read %q, %v", got, err)
	}
	if r := waitRelay(t, done, calls, 5*time.Second); r.err != nil || r.up != 3 || r.down != 5 {
		t.Errorf("relay = %d up, %d down, %v; want 3, 5, nil", r.up, r.down, r.err)
	}
}

// The context ends a tunnel whose two directions are both parked, and done
// runs once.
func TestParkContextEndsBothParked(t *testing.T) {
	idleParker()
	_, clientSide := tcpPair(t)
	upstreamSide, _ := tcpPair(t)
	before := runtime.NumGoroutine()
	ctx, cancel := context.WithCancel(context.Background())
	done, calls := countingRelay(ctx, clientSide, upstreamSide, time.Minute, 5*time.Millisecond)
	waitParked(t, before)
	cancel()
	if r := waitRelay(t, done, calls, 5*time.Second); r.err != nil {
		t.Errorf("relay ended by its context reported %v", r.err)
	}
}

// Data that arrives around the park deadline is never stranded: many
// round trips with pauses near parkAfter, several tunnels at once, every
// byte echoed back and counted.
func TestParkWakeStress(t *testing.T) {
	const tunnels, rounds = 8, 300
	var wg sync.WaitGroup
	for i := range tunnels {
		clientApp, clientSide := tcpPair(t)
		upstreamSide, serverApp := tcpPair(t)
		done, calls := countingRelay(context.Background(), clientSide, upstreamSide, time.Minute, time.Millisecond)
		go func() { io.Copy(serverApp, serverApp); serverApp.CloseWrite() }()
		wg.Add(1)
		go func() {
			defer wg.Done()
			var sent int64
			buf := make([]byte, 64)
			for r := range rounds {
				msg := fmt.Sprintf("t%d r%d", i, r)
				clientApp.Write([]byte(msg))
				sent += int64(len(msg))
				clientApp.SetReadDeadline(time.Now().Add(5 * time.Second))
				n, err := io.ReadAtLeast(clientApp, buf, len(msg))
				if err != nil || string(buf[:n]) != msg {
					t.Errorf("tunnel %d round %d: %q, %v", i, r, buf[:n], err)
					return
				}
				time.Sleep(time.Duration(rand.IntN(2500)) * time.Microsecond)
			}
			clientApp.CloseWrite()
			clientApp.SetReadDeadline(time.Now().Add(5 * time.Second))
			if rest, err := io.ReadAll(clientApp); len(rest) != 0 || err != nil {
				t.Errorf("tunnel %d: %q, %v after the last echo", i, rest, err)
			}
			if r := waitRelay(t, done, calls, 5*time.Second); r.err != nil || r.up != sent || r.down != sent {
				t.Errorf("tunnel %d: relay = %d up, %d down, %v; want %d both ways", i, r.up, r.down, r.err, sent)
			}
		}()
	}
	wg.Wait()
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip(err)
	}
	return len(ents)
}

// Tunnels that park, wake and end in every way leave no goroutine and no
// descriptor behind (splice pipes go back once the pool is collected).
func TestParkNoLeaks(t *testing.T) {
	idleParker()
	runtime.GC()
	runtime.GC()
	time.Sleep(50 * time.Millisecond)
	g0, fd0 := runtime.NumGoroutine(), openFDs(t)

	const each = 40
	ctx, cancel := context.WithCancel(context.Background())
	var dones []chan relayResult
	var closers []func()
	for i := range 4 * each {
		clientApp, clientSide := tcpPair(t)
		upstreamSide, serverApp := tcpPair(t)
		c := ctx
		if i%4 != 3 {
			c = context.Background()
		}
		dones = append(dones, startRelay(c, clientSide, upstreamSide, 100*time.Millisecond, 5*time.Millisecond))
		clientApp.Write([]byte("x"))
		switch i % 4 {
		case 0: // both sides close cleanly
			closers = append(closers, func() { clientApp.CloseWrite(); serverApp.CloseWrite() })
		case 1: // a reset
			closers = append(closers, func() { serverApp.SetLinger(0); serverApp.Close() })
		case 2: // a half-close that times out
			closers = append(closers, func() { clientApp.CloseWrite() })
		case 3: // the context
		}
		t.Cleanup(func() { clientApp.Close(); serverApp.Close() })
	}
	time.Sleep(50 * time.Millisecond) // everything parks
	for _, c := range closers {
		c()
	}
	cancel()
	for i, d := range dones {
		select {
		case <-d:
		case <-time.After(5 * time.Second):
			t.Fatalf("tunnel %d did not end", i)
		}
	}
	// The test's own ends are still open: 2 per tunnel.
	wantFD := fd0 + 2*len(dones)
	deadline := time.Now().Add(5 * time.Second)
	for {
		runtime.GC()
		g, fd := runtime.NumGoroutine(), openFDs(t)
		if g <= g0 && fd <= wantFD {
			break
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("after %d tunnels: %d goroutines (was %d), %d fds (want %d)\n%s",
				len(dones), g, g0, fd, wantFD, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func sysfd(c *net.TCPConn) (n int) {
	raw, _ := c.SyscallConn()
	raw.Control(func(fd uintptr) { n = int(fd) })
	return n
}

// A socket number reused by a new tunnel right after the old tunnel ended
// with a watch armed on it gets a working watch of its own.
func TestParkFDReuse(t *testing.T) {
	idleParker()
	seen := map[int]bool{}
	reused := 0
	for i := range 50 {
		clientApp, clientSide := tcpPair(t)
		upstreamSide, serverApp := tcpPair(t)
		for _, c := range []*net.TCPConn{clientSide, upstreamSide} {
			if seen[sysfd(c)] {
				reused++
			}
			seen[sysfd(c)] = true
		}
		before := runtime.NumGoroutine()
		done := startRelay(context.Background(), clientSide, upstreamSide, time.Minute, 2*time.Millisecond)
		waitParked(t, before)
		if i%2 == 0 {
			msg := fmt.Sprint("round ", i)
			serverApp.Write([]byte(msg))
			buf := make([]byte, 32)
			clientApp.SetReadDeadline(time.Now().Add(5 * time.Second))
			if n, err := io.ReadAtLeast(clientApp, buf, len(msg)); err != nil || string(buf[:n]) != msg {
				t.Fatalf("round %d: %q, %v", i, buf[:n], err)
			}
		}
		// Both directions armed; the peers end the tunnel, and the relay
		// closes its sockets, whose numbers the next round takes.
		clientApp.SetLinger(0)
		clientApp.Close()
		serverApp.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("round %d: relay did not end", i)
		}
		clientApp.Close() // tcpPair's cleanup would keep its numbers taken
		serverApp.Close()
	}
	if reused == 0 {
		t.Error("no socket number was reused; the test proves nothing")
	}
}

// parkedServer is a Server with n spliced connections to a silent
// upstream; every direction parks once idleAfter has passed.
func parkedServer(t *testing.T, n int) (*Server, *syncBuffer) {
	t.Helper()
	upL, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { upL.Close() })
	var mu sync.Mutex
	var ups []net.Conn
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range ups {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := upL.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			ups = append(ups, c)
			mu.Unlock()
		}
	}()
	s, _, logs := mustServer(t, Config{})
	cfg := s.cfg.Load()
	for range n {
		_, clientSide := tcpPair(t)
		if !s.track(clientSide) {
			t.Fatal("not tracked")
		}
		cn := &conn{client: clientSide, dst: upL.Addr().(*net.TCPAddr).AddrPort(),
			start: time.Now(), rule: -1, action: ActionSplice, counted: true}
		s.stats.active[ActionSplice].Add(1)
		go s.splice(cn, cfg, []byte("hello"), func() {})
	}
	return s, logs
}

func shutdownSoon(s *Server) error {
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	return s.Shutdown(ctx)
}

// Server.Shutdown past its drain time ends spliced tunnels that are
// parked: each is finished (untracked, counted, logged) and Shutdown
// returns.
func TestParkShutdownParkedTunnels(t *testing.T) {
	idleParker()
	const tunnels = 50
	s, logs := parkedServer(t, tunnels)
	time.Sleep(idleAfter + 500*time.Millisecond)
	start := time.Now()
	if err := shutdownSoon(s); err == nil {
		t.Error("Shutdown reported no connection left after the drain time")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Shutdown took %v", d)
	}
	if n := s.stats.Active(ActionSplice); n != 0 {
		t.Errorf("%d spliced connections still counted active", n)
	}
	n := 0
	for _, m := range logs.lines(t) {
		if m["msg"] == "connection" {
			n++
			if m["error"] != nil || m["bytes_up"] != float64(5) || m["reason"] != nil {
				t.Errorf("log line %v, want 5 bytes up and no error or reason", m)
			}
		}
	}
	if n != tunnels {
		t.Errorf("%d connection log lines, want %d", n, tunnels)
	}
}

// Shutdown past its drain time reports every connection it had to close,
// parked tunnels included, although cancelling the relays finishes those
// at once. Four servers make a miscount likely to show.
func TestParkShutdownCountsParkedTunnels(t *testing.T) {
	idleParker()
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(8))
	const servers, tunnels = 4, 100
	var all []*Server
	for range servers {
		s, _ := parkedServer(t, tunnels)
		all = append(all, s)
	}
	time.Sleep(idleAfter + 500*time.Millisecond)
	for i, s := range all {
		err := shutdownSoon(s)
		if want := fmt.Sprintf("closed %d ", tunnels); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("server %d: Shutdown = %v, want %q", i, err, want)
		}
	}
}

// When both directions reach EOF at the same moment, no half-close timer
// outlives the tunnel: one left running would keep the finished tunnel
// (and through done, the server's conn) reachable for the half-close
// timeout. The two EOFs are forced close together here; on a live gateway
// it takes a client and a server closing within the same microsecond.
func TestParkSimultaneousEOFLeavesNoTimer(t *testing.T) {
	const rounds = 1000
	var collected atomic.Int32
	for range rounds {
		_, clientSide := tcpPair(t)
		upstreamSide, _ := tcpPair(t)
		// The tunnel points at itself, so the finalizer goes on something
		// only it holds.
		tag := new([16]byte)
		runtime.SetFinalizer(tag, func(*[16]byte) { collected.Add(1) })
		tn := &tunnel{halfClose: time.Hour, open: 2, stopCtx: func() bool { return true },
			done: func(up, down int64, err error) { tag[0]++ }}
		tn.dirs[0] = tunnelDir{t: tn, src: clientSide, dst: upstreamSide, name: "client to upstream"}
		tn.dirs[1] = tunnelDir{t: tn, src: upstreamSide, dst: clientSide, name: "upstream to client"}
		var ready, gate atomic.Bool
		other := make(chan struct{})
		go func() {
			ready.Store(true)
			for !gate.Load() {
			}
			tn.eof(&tn.dirs[0])
			close(other)
		}()
		for !ready.Load() {
		}
		gate.Store(true)
		tn.eof(&tn.dirs[1])
		<-other
	}
	for range 10 {
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	if n := rounds - collected.Load(); n > 0 {
		t.Errorf("%d of %d finished tunnels still held, by a half-close timer nobody stopped", n, rounds)
	}
}

func goroutinesCreated() uint64 {
	s := []metrics.Sample{{Name: "/sched/goroutines-created:goroutines"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// Parked directions stay parked while nothing arrives: no spurious wakes,
// also for a direction whose source socket the relay half-closed (SHUT_WR)
// after the other direction's EOF, and for the reading side of that EOF.
func TestParkedStayParked(t *testing.T) {
	idleParker()
	clientApp, clientSide := tcpPair(t)
	upstreamSide, serverApp := tcpPair(t)
	startRelay(context.Background(), clientSide, upstreamSide, time.Minute, 2*time.Millisecond)
	clientApp2, clientSide2 := tcpPair(t)
	upstreamSide2, _ := tcpPair(t)
	startRelay(context.Background(), clientSide2, upstreamSide2, time.Minute, 2*time.Millisecond)
	clientApp2.CloseWrite()
	serverApp.Write([]byte("x"))
	clientApp.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(clientApp, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	c0 := goroutinesCreated()
	time.Sleep(300 * time.Millisecond) // 150 park periods
	if n := goroutinesCreated() - c0; n > 2 {
		t.Errorf("%d goroutines started in 300ms by idle parked tunnels", n)
	}
}

// fileRaw hands a regular file to the parker, which epoll refuses.
type fileRaw struct{ f *os.File }

func (r fileRaw) Control(fn func(uintptr)) error { fn(r.f.Fd()); return nil }
func (r fileRaw) Read(func(uintptr) bool) error  { return errors.ErrUnsupported }
func (r fileRaw) Write(func(uintptr) bool) error { return errors.ErrUnsupported }

// A watch whose EPOLL_CTL_ADD failed (in production: ENOSPC at
// fs.epoll.max_user_watches, or ENOMEM) does not poison the direction: the
// next park adds it again instead of modifying a watch that never existed,
// which would fail every time and keep the direction from ever parking.
// The failed first add is forced here with a regular file.
func TestParkWatchAfterFailedAdd(t *testing.T) {
	p, err := newParker()
	if err != nil {
		t.Skip(err)
	}
	defer p.ep.Close()
	f, err := os.CreateTemp(t.TempDir(), "not-a-socket")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	_, sock := tcpPair(t)
	d := &tunnelDir{t: &tunnel{}, name: "client to upstream", raw: fileRaw{f}}
	if err := p.watch(d); err == nil {
		t.Fatal("epoll accepted a regular file")
	}
	d.raw, _ = sock.SyscallConn()
	if err := p.watch(d); err != nil {
		t.Errorf("watch on a socket after an earlier add failed: %v", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.waiting) > 1 {
		t.Errorf("%d registrations for one direction", len(p.waiting))
	}
}

// More directions wake at once than one epoll_wait returns (256): every
// one is woken, none is lost between batches.
func TestParkManyWakeAtOnce(t *testing.T) {
	idleParker()
	const tunnels = 1000
	type ends struct{ client, server *net.TCPConn }
	var all []ends
	before := runtime.NumGoroutine()
	for range tunnels {
		clientApp, clientSide := tcpPair(t)
		upstreamSide, serverApp := tcpPair(t)
		all = append(all, ends{clientApp, serverApp})
		startRelay(context.Background(), clientSide, upstreamSide, time.Minute, 20*time.Millisecond)
	}
	waitParked(t, before)
	for _, e := range all {
		e.client.Write([]byte("c"))
		e.server.Write([]byte("s"))
	}
	buf := make([]byte, 1)
	for i, e := range all {
		for _, c := range []*net.TCPConn{e.server, e.client} {
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadFull(c, buf); err != nil {
				t.Fatalf("tunnel %d: %v after a mass wake", i, err)
			}
		}
	}
}
