package tls

import (
	"errors"
	"net"
	"os"
	"testing"
	"time"
)

// tcpPlain lets a plain TCP connection stand in for the plaintext side of a
// TLS connection in relay tests.
type tcpPlain struct{ *net.TCPConn }

func (c tcpPlain) NetConn() net.Conn { return c.TCPConn }

func loopbackPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
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

// A client that half-closes towards an upstream that neither answers nor
// closes is cut after the half-close timeout.
func TestRelayHalfCloseTimeout(t *testing.T) {
	clientApp, down := loopbackPair(t)
	up, _ := loopbackPair(t)
	done := make(chan error, 1)
	go func() {
		_, _, err := relay(tcpPlain{down}, tcpPlain{up}, 200*time.Millisecond)
		done <- err
	}()
	clientApp.CloseWrite()
	select {
	case err := <-done:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("relay error %v, want the deadline", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("relay still running 5s after a 200ms half-close timeout")
	}
}
