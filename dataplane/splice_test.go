package dataplane

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.DialTCP("tcp", nil, l.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	s, err := l.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c, s
}

type relayResult struct {
	up, down int64
	err      error
}

func startRelay(ctx context.Context, client, upstream *net.TCPConn,
	halfClose, parkAfter time.Duration) chan relayResult {
	done := make(chan relayResult, 1)
	relay(ctx, client, upstream, halfClose, parkAfter, func(up, down int64, err error) {
		done <- relayResult{up, down, err}
	})
	return done
}

// eachParking runs f with directions that never park and with directions
// that park after every pause of a few milliseconds, so that every step
// also meets a parked direction.
func eachParking(t *testing.T, f func(t *testing.T, parkAfter time.Duration)) {
	t.Run("running", func(t *testing.T) { f(t, time.Hour) })
	t.Run("parking", func(t *testing.T) { f(t, 5*time.Millisecond) })
}

// Bytes cross both ways and a half-close is passed on; the relay ends when
// both directions have.
func TestRelayHalfClose(t *testing.T) {
	eachParking(t, func(t *testing.T, parkAfter time.Duration) {
		clientApp, clientSide := tcpPair(t)
		upstreamSide, serverApp := tcpPair(t)
		done := startRelay(context.Background(), clientSide, upstreamSide, time.Minute, parkAfter)

		clientApp.Write([]byte("request"))
		clientApp.CloseWrite()
		got, _ := io.ReadAll(serverApp) // ends at the FIN the relay passed on
		if string(got) != "request" {
			t.Fatalf("server read %q", got)
		}
		serverApp.Write([]byte("response"))
		serverApp.CloseWrite()
		back, _ := io.ReadAll(clientApp)
		if string(back) != "response" {
			t.Fatalf("client read %q", back)
		}
		r := <-done
		if r.err != nil || r.up != 7 || r.down != 8 {
			t.Errorf("relay = %d up, %d down, %v; want 7, 8, nil", r.up, r.down, r.err)
		}
	})
}

// A client that half-closes towards a server that never answers nor closes
// is cut after the half-close timeout instead of holding the connection.
func TestRelayHalfCloseTimeout(t *testing.T) {
	eachParking(t, func(t *testing.T, parkAfter time.Duration) {
		clientApp, clientSide := tcpPair(t)
		upstreamSide, _ := tcpPair(t)
		done := startRelay(context.Background(), clientSide, upstreamSide, 200*time.Millisecond, parkAfter)
		clientApp.CloseWrite()
		select {
		case r := <-done:
			if !errors.Is(r.err, os.ErrDeadlineExceeded) {
				t.Errorf("relay error %v, want the deadline", r.err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("relay still running 5s after a 200ms half-close timeout")
		}
	})
}

// Ending the context (a shutdown past its drain time) ends the relay even
// when one direction waits on a silent upstream.
func TestRelayContextEnds(t *testing.T) {
	eachParking(t, func(t *testing.T, parkAfter time.Duration) {
		clientApp, clientSide := tcpPair(t)
		upstreamSide, _ := tcpPair(t)
		ctx, cancel := context.WithCancel(context.Background())
		done := startRelay(ctx, clientSide, upstreamSide, time.Hour, parkAfter)
		clientApp.CloseWrite()
		time.Sleep(50 * time.Millisecond)
		cancel()
		select {
		case r := <-done:
			if r.err != nil {
				t.Errorf("relay ended by its context reported %v", r.err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("relay still running 5s after its context ended")
		}
	})
}

// Bulk data crosses the splice relay intact, both ways at once.
func TestRelayBulk(t *testing.T) {
	eachParking(t, func(t *testing.T, parkAfter time.Duration) {
		clientApp, clientSide := tcpPair(t)
		upstreamSide, serverApp := tcpPair(t)
		done := startRelay(context.Background(), clientSide, upstreamSide, time.Minute, parkAfter)

		payload := make([]byte, 16<<20)
		rand.Read(payload)
		// The server echoes what it receives, so both directions carry 16 MiB.
		go func() {
			io.Copy(serverApp, serverApp)
			serverApp.CloseWrite()
		}()
		go func() {
			clientApp.Write(payload)
			clientApp.CloseWrite()
		}()
		clientApp.SetReadDeadline(time.Now().Add(30 * time.Second))
		got, err := io.ReadAll(clientApp)
		if err != nil {
			t.Fatalf("read the echo: %v", err)
		}
		if !bytes.Equal(got, payload) {
			t.Fatalf("echo of %d bytes differs (got %d bytes)", len(payload), len(got))
		}
		if r := <-done; r.err != nil || r.up != int64(len(payload)) || r.down != int64(len(payload)) {
			t.Errorf("relay = %d up, %d down, %v", r.up, r.down, r.err)
		}
	})
}

// Idle tunnels hold no goroutines while parked, and each wakes when its
// peer speaks again, in either direction.
func TestRelayParkedTunnelsHoldNoGoroutines(t *testing.T) {
	const tunnels = 100
	type ends struct{ client, server *net.TCPConn }
	var all []ends
	var dones []chan relayResult
	before := runtime.NumGoroutine()
	// Tunnels of earlier tests whose sockets the tests closed themselves
	// stay parked (only the relay's context ends a parked tunnel from
	// outside), so the gauge is read as a difference.
	parkedBefore := ParkedDirections()
	for range tunnels {
		clientApp, clientSide := tcpPair(t)
		upstreamSide, serverApp := tcpPair(t)
		all = append(all, ends{clientApp, serverApp})
		dones = append(dones, startRelay(context.Background(), clientSide, upstreamSide,
			time.Minute, 20*time.Millisecond))
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine()-before > tunnels/10 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if extra := runtime.NumGoroutine() - before; extra > tunnels/10 {
		t.Fatalf("%d idle tunnels still hold %d goroutines", tunnels, extra)
	}
	if n := ParkedDirections() - parkedBefore; n < 2*tunnels-tunnels/10 || n > 2*tunnels {
		t.Errorf("%d directions parked for %d idle tunnels, want about %d", n, tunnels, 2*tunnels)
	}

	buf := make([]byte, 16)
	for i, e := range all {
		// Both directions wake: the client's request, the server's answer.
		for _, hop := range [][2]*net.TCPConn{{e.client, e.server}, {e.server, e.client}} {
			msg := fmt.Sprintf("tunnel %d", i)
			hop[0].Write([]byte(msg))
			hop[1].SetReadDeadline(time.Now().Add(5 * time.Second))
			n, err := io.ReadAtLeast(hop[1], buf, len(msg))
			if err != nil || string(buf[:n]) != msg {
				t.Fatalf("tunnel %d: read %q, %v after parking; want %q", i, buf[:n], err, msg)
			}
		}
		e.client.Close()
		e.server.Close()
	}
	for i, done := range dones {
		select {
		case r := <-done:
			if r.up != int64(len(fmt.Sprint("tunnel ", i))) {
				t.Errorf("tunnel %d relayed %d bytes up", i, r.up)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("tunnel %d still relaying 5s after both ends closed", i)
		}
	}
	if n := ParkedDirections() - parkedBefore; n != 0 {
		t.Errorf("%d directions still counted as parked after every tunnel ended", n)
	}
}

// A byte sent as TCP urgent data is relayed in line with the rest, and
// the stream after it is not cut off: splice(2) stops at the urgent mark
// as it does at the end of a stream.
func TestRelayUrgentData(t *testing.T) {
	eachParking(t, func(t *testing.T, parkAfter time.Duration) {
		clientApp, clientSide := tcpPair(t)
		upstreamSide, serverApp := tcpPair(t)
		done := startRelay(context.Background(), clientSide, upstreamSide, time.Minute, parkAfter)

		for _, hop := range [][2]*net.TCPConn{{clientApp, serverApp}, {serverApp, clientApp}} {
			hop[0].Write([]byte("abc"))
			raw, err := hop[0].SyscallConn()
			if err != nil {
				t.Fatal(err)
			}
			var sendErr error
			raw.Control(func(fd uintptr) {
				sendErr = unix.Sendto(int(fd), []byte("!"), unix.MSG_OOB, nil)
			})
			if sendErr != nil {
				t.Fatalf("send urgent byte: %v", sendErr)
			}
			time.Sleep(20 * time.Millisecond)
			hop[0].Write([]byte("def"))
			hop[0].CloseWrite()
			hop[1].SetReadDeadline(time.Now().Add(5 * time.Second))
			if got, err := io.ReadAll(hop[1]); string(got) != "abc!def" || err != nil {
				t.Errorf("peer read %q, %v; want abc!def", got, err)
			}
		}
		if r := <-done; r.err != nil || r.up != 7 || r.down != 7 {
			t.Errorf("relay = %d up, %d down, %v; want 7, 7, nil", r.up, r.down, r.err)
		}
	})
}
