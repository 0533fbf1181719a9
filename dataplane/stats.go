package dataplane

import "sync/atomic"

// Stats counts connections by hello class and by action taken, and bytes
// relayed. All fields are safe to read concurrently with Load.
type Stats struct {
	Named, NoSNI, NotTLS, Malformed, HelloFailed atomic.Uint64
	Spliced, Bumped, Blocked, Failed             atomic.Uint64
	BytesUp, BytesDown                           atomic.Uint64
}

func (st *Stats) count(cn *conn) {
	switch cn.class {
	case HelloNamed:
		st.Named.Add(1)
	case HelloNoSNI:
		st.NoSNI.Add(1)
	case HelloNotTLS:
		st.NotTLS.Add(1)
	case HelloMalformed:
		st.Malformed.Add(1)
	default:
		st.HelloFailed.Add(1)
	}
	switch cn.action {
	case ActionSplice:
		st.Spliced.Add(1)
	case ActionBump:
		st.Bumped.Add(1)
	case ActionBlock:
		st.Blocked.Add(1)
	}
	if cn.err != nil && cn.action != ActionBlock {
		st.Failed.Add(1)
	}
	st.BytesUp.Add(uint64(cn.up))
	st.BytesDown.Add(uint64(cn.down))
}
