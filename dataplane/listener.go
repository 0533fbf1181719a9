package dataplane

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ListenTransparent opens a TCP listener on addr that can accept connections
// steered to it for any destination address. IP_TRANSPARENT lets the kernel
// answer a SYN from a non-local source address (without it the SYN-ACK has no
// route and is dropped). MPTCP is turned off because a sockmap refuses MPTCP
// listeners, and Go enables it by default.
func ListenTransparent(ctx context.Context, addr string) (*net.TCPListener, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, fmt.Errorf("listen address %q: %w", addr, err)
	}
	network := "tcp4"
	if !ap.Addr().Is4() {
		network = "tcp6"
	}
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		return setTransparent(c, network == "tcp6")
	}}
	lc.SetMultipathTCP(false)
	l, err := lc.Listen(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	return l.(*net.TCPListener), nil
}

func setTransparent(c syscall.RawConn, ipv6 bool) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		if ipv6 {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1)
			if serr != nil {
				serr = fmt.Errorf("set IPV6_TRANSPARENT: %w", serr)
			}
			return
		}
		serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1)
		if serr != nil {
			serr = fmt.Errorf("set IP_TRANSPARENT: %w", serr)
		}
	})
	if err != nil {
		return err
	}
	return serr
}

// localAddrs answers whether an address belongs to this host. Connections to
// the gateway's own addresses are refused: splicing or bumping them would let
// a client reach the gateway's local services through the dataplane, or make
// the dataplane dial itself.
type localAddrs struct {
	mu      sync.Mutex
	addrs   map[netip.Addr]struct{}
	expires time.Time
	// list returns the host's addresses; tests replace it.
	list func() ([]net.Addr, error)
}

// localAddrsTTL bounds how stale the cached address list may be. Listing
// addresses costs a netlink dump, too much to do per connection.
const localAddrsTTL = 2 * time.Second

func newLocalAddrs() *localAddrs {
	return &localAddrs{list: net.InterfaceAddrs}
}

func (l *localAddrs) contains(a netip.Addr) bool {
	a = a.Unmap()
	if a.IsLoopback() || a.IsUnspecified() {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if time.Now().After(l.expires) {
		l.refresh()
	}
	_, ok := l.addrs[a]
	return ok
}

func (l *localAddrs) refresh() {
	addrs, err := l.list()
	if err != nil {
		// Keep the previous set: a failed refresh must not turn the
		// check off. It is retried on the next connection.
		return
	}
	m := make(map[netip.Addr]struct{}, len(addrs))
	for _, a := range addrs {
		if ipnet, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(ipnet.IP); ok {
				m[ip.Unmap()] = struct{}{}
			}
		}
	}
	l.addrs = m
	l.expires = time.Now().Add(localAddrsTTL)
}
