package tls

import (
	"crypto/rand"
	"sync"
	"time"
)

// Session ticket keys of the client leg. crypto/tls gives every Config its
// own random keys, and the bump makes a Config per connection, so without
// shared keys no client could ever resume with the gateway: every
// reconnect of a browser would cost a full handshake, a forged-certificate
// signature included, and every connection would be sent a ticket that
// can never be used.
const (
	// ticketKeyRotation is how often a new key starts encrypting tickets.
	ticketKeyRotation = 6 * time.Hour
	// ticketKeysKept is how many keys still decrypt: a ticket is good for
	// at most ticketKeyRotation × ticketKeysKept, 24 hours.
	ticketKeysKept = 4
)

// ticketKeys holds the keys, newest first, and rotates them on use. The
// keys live only in memory: a restart ends every client's tickets, which
// costs one full handshake each.
type ticketKeys struct {
	mu      sync.Mutex
	keys    [][32]byte
	rotated time.Time
}

// at returns the keys to use at now, making a new one when the newest is
// older than ticketKeyRotation. The result must not be modified.
func (k *ticketKeys) at(now time.Time) ([][32]byte, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(k.keys) > 0 && now.Sub(k.rotated) < ticketKeyRotation && !now.Before(k.rotated) {
		return k.keys, nil
	}
	var key [32]byte
	if _, err := rand.Read(key[:]); err != nil {
		return nil, err
	}
	keys := make([][32]byte, 0, ticketKeysKept)
	keys = append(keys, key)
	keys = append(keys, k.keys[:min(len(k.keys), ticketKeysKept-1)]...)
	// A new slice, so that callers still holding the old one see no change.
	k.keys, k.rotated = keys, now
	return keys, nil
}
