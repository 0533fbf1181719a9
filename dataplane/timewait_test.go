package dataplane

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The SOCK_DESTROY request is a struct inet_diag_req_v2 with the socket's
// ports and addresses in network order and IPv4 addresses in the first
// four bytes of their fields.
func TestDiagRequestLayout(t *testing.T) {
	tests := []struct {
		name     string
		family   uint8
		src, dst net.IP
		wantSrc  []byte
		wantDst  []byte
	}{
		{"ipv4", unix.AF_INET, net.ParseIP("198.19.1.2"), net.ParseIP("198.18.1.2"),
			[]byte{198, 19, 1, 2}, []byte{198, 18, 1, 2}},
		{"ipv6", unix.AF_INET6, net.ParseIP("2001:2:0:2::2"), net.ParseIP("2001:2::1:2"),
			net.ParseIP("2001:2:0:2::2").To16(), net.ParseIP("2001:2::1:2").To16()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &diagRequest{family: tt.family, id: netlink.SocketID{
				SourcePort: 443, DestinationPort: 40000, Source: tt.src, Destination: tt.dst,
				Interface: 3, Cookie: [2]uint32{0x11223344, 0x55667788},
			}}
			b := r.Serialize()
			if len(b) != r.Len() || len(b) != sizeofDiagRequest {
				t.Fatalf("request is %d bytes, Len says %d, want %d", len(b), r.Len(), sizeofDiagRequest)
			}
			want := make([]byte, sizeofDiagRequest)
			want[0], want[1] = tt.family, unix.IPPROTO_TCP
			binary.NativeEndian.PutUint32(want[4:], 1<<tcpTimeWait)
			copy(want[8:], []byte{0x01, 0xbb, 0x9c, 0x40}) // 443, 40000
			copy(want[12:], tt.wantSrc)
			copy(want[28:], tt.wantDst)
			binary.NativeEndian.PutUint32(want[44:], 3)
			binary.NativeEndian.PutUint32(want[48:], 0x11223344)
			binary.NativeEndian.PutUint32(want[52:], 0x55667788)
			if !bytes.Equal(b, want) {
				t.Errorf("request\n%x\nwant\n%x", b, want)
			}
		})
	}
}
