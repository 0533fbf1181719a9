package dataplane

import (
	"errors"
	"io"
	"os"
	"sync/atomic"
)

// HelloResult is how reading a connection's first bytes ended: one of the
// hello classes, or the reason no hello could be read.
type HelloResult uint8

const (
	ResultNamed HelloResult = iota
	ResultNoSNI
	ResultNotTLS
	ResultMalformed
	ResultTimeout  // the client was silent or too slow
	ResultTooLarge // the size bound came before a whole hello
	ResultClosed   // the client closed before a whole hello
	ResultError    // any other read error
	numHelloResults
)

var helloResultNames = [numHelloResults]string{
	"named", "no_sni", "not_tls", "malformed", "timeout", "too_large", "closed", "error",
}

func (r HelloResult) String() string {
	if r < numHelloResults {
		return helloResultNames[r]
	}
	return "unknown"
}

// HelloResults lists every result, for exporting the counters.
func HelloResults() []HelloResult {
	out := make([]HelloResult, numHelloResults)
	for i := range out {
		out[i] = HelloResult(i)
	}
	return out
}

func helloResult(class HelloClass, err error) HelloResult {
	switch {
	case class == HelloMalformed:
		return ResultMalformed
	case err == nil && class == HelloNamed:
		return ResultNamed
	case err == nil && class == HelloNoSNI:
		return ResultNoSNI
	case err == nil && class == HelloNotTLS:
		return ResultNotTLS
	case errors.Is(err, os.ErrDeadlineExceeded):
		return ResultTimeout
	case errors.Is(err, ErrHelloTooLarge):
		return ResultTooLarge
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return ResultClosed
	}
	return ResultError
}

// Actions lists every action, for exporting the counters.
func Actions() []Action { return []Action{ActionSplice, ActionBump, ActionBlock} }

const numActions = int(ActionBlock) + 1

// Stats counts what the dataplane did. Every method is safe for concurrent
// use; readers see each counter atomically, not a consistent snapshot.
type Stats struct {
	hellos [numHelloResults]atomic.Uint64
	// conns counts finished connections by action and by whether they
	// ended with an error (index 1) or not (index 0).
	conns      [numActions][2]atomic.Uint64
	active     [numActions]atomic.Int64
	bytesUp    [numActions]atomic.Uint64
	bytesDown  [numActions]atomic.Uint64
	dialErrors atomic.Uint64
}

// Hellos returns how many connections' first bytes ended as r.
func (st *Stats) Hellos(r HelloResult) uint64 { return st.hellos[r].Load() }

// Connections returns the finished connections that took action a and
// ended with an error (failed) or without.
func (st *Stats) Connections(a Action, failed bool) uint64 {
	i := 0
	if failed {
		i = 1
	}
	return st.conns[a][i].Load()
}

// Active returns the connections being handled with action a.
func (st *Stats) Active(a Action) int64 { return st.active[a].Load() }

// Bytes returns the bytes relayed for connections with action a, client to
// upstream (up) or back.
func (st *Stats) Bytes(a Action, up bool) uint64 {
	if up {
		return st.bytesUp[a].Load()
	}
	return st.bytesDown[a].Load()
}

// DialErrors returns how often the original destination could not be
// reached.
func (st *Stats) DialErrors() uint64 { return st.dialErrors.Load() }

func (st *Stats) finish(cn *conn) {
	a := cn.action
	if a == 0 {
		return
	}
	failed := 0
	if cn.err != nil {
		failed = 1
	}
	st.conns[a][failed].Add(1)
	st.bytesUp[a].Add(uint64(cn.up))
	st.bytesDown[a].Add(uint64(cn.down))
}
