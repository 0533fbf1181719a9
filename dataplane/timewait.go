package dataplane

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// tcpTimeWait is TCP_TIME_WAIT of the kernel's TCP states.
const tcpTimeWait = 6

// ReleaseTimeWait destroys the TIME_WAIT sockets that intercepted flows
// left behind: those on one of ports whose local address is not one of
// this host's, which only a transparent socket can have. It returns how
// many it destroyed.
//
// Once the steering is detached, a flow's packets are forwarded again, yet
// such a socket still matches the flow's addresses for up to a minute.
// The kernel's early demultiplexing attaches it to each packet of a client
// that reuses its source port, and forwarding drops packets that carry a
// socket: the client could not connect until the socket expired. The
// gateway's own sockets (to upstreams) are left alone.
func ReleaseTimeWait(ports []uint16) (int, error) {
	isLocal := newLocalAddrs().contains
	destroyed := 0
	var errs []error
	for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		socks, err := netlink.SocketDiagTCP(family)
		if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
			errs = append(errs, fmt.Errorf("list tcp sockets of family %d: %w", family, err))
			continue
		}
		for _, s := range socks {
			if s.State != tcpTimeWait || !slices.Contains(ports, s.ID.SourcePort) {
				continue
			}
			local, ok := netip.AddrFromSlice(s.ID.Source)
			if !ok || isLocal(local.Unmap()) {
				continue
			}
			if err := destroySocket(family, s.ID); err != nil {
				// Gone in the meantime: it expired, which is the point.
				if !errors.Is(err, unix.ENOENT) {
					errs = append(errs, fmt.Errorf("destroy time-wait socket %s:%d-%s:%d: %w",
						local.Unmap(), s.ID.SourcePort, s.ID.Destination, s.ID.DestinationPort, err))
				}
				continue
			}
			destroyed++
		}
	}
	return destroyed, errors.Join(errs...)
}

// destroySocket asks the kernel (SOCK_DESTROY, which needs CAP_NET_ADMIN)
// to end the TCP socket id names; the cookie from the dump pins it to the
// very socket listed.
func destroySocket(family uint8, id netlink.SocketID) error {
	req := nl.NewNetlinkRequest(nl.SOCK_DESTROY, unix.NLM_F_ACK)
	req.AddData(&diagRequest{family: family, id: id})
	_, err := req.Execute(unix.NETLINK_INET_DIAG, 0)
	return err
}

// diagRequest is a struct inet_diag_req_v2 (linux/inet_diag.h) for one TCP
// socket.
type diagRequest struct {
	family uint8
	id     netlink.SocketID
}

const sizeofDiagRequest = 56

func (r *diagRequest) Len() int { return sizeofDiagRequest }

func (r *diagRequest) Serialize() []byte {
	b := make([]byte, sizeofDiagRequest)
	b[0] = r.family
	b[1] = unix.IPPROTO_TCP
	// b[2] extensions and b[3] padding stay zero; the state mask
	// matters to dumps only.
	binary.NativeEndian.PutUint32(b[4:], 1<<tcpTimeWait)
	// struct inet_diag_sockid: ports and addresses in network order.
	binary.BigEndian.PutUint16(b[8:], r.id.SourcePort)
	binary.BigEndian.PutUint16(b[10:], r.id.DestinationPort)
	putDiagAddr(b[12:28], r.family, r.id.Source)
	putDiagAddr(b[28:44], r.family, r.id.Destination)
	binary.NativeEndian.PutUint32(b[44:], r.id.Interface)
	binary.NativeEndian.PutUint32(b[48:], r.id.Cookie[0])
	binary.NativeEndian.PutUint32(b[52:], r.id.Cookie[1])
	return b
}

// putDiagAddr writes an address field: an IPv4 address in its first four
// bytes, an IPv6 one in all sixteen.
func putDiagAddr(b []byte, family uint8, ip []byte) {
	a, _ := netip.AddrFromSlice(ip)
	if family == unix.AF_INET {
		v4 := a.Unmap().As4()
		copy(b, v4[:])
		return
	}
	v6 := a.As16()
	copy(b, v6[:])
}
