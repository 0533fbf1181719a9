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
	mu   sync.Mutex
	keys [][32]byte
	// made is when each key of keys was made.
	made []time.Time
}

// at returns the keys to use at now: a new one first when the newest is
// older than ticketKeyRotation, and none older than ticketKeysKept
// rotations, however long since the last call. The result must not be
// modified.
func (k *ticketKeys) at(now time.Time) ([][32]byte, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(k.keys) > 0 && now.Sub(k.made[0]) < ticketKeyRotation && !now.Before(k.made[0]) {
		return k.keys, nil
	}
	var key [32]byte
	if _, err := rand.Read(key[:]); err != nil {
		return nil, err
	}
	// New slices, so that callers still holding the old ones see no change.
	keys, made := [][32]byte{key}, []time.Time{now}
	for i := range k.keys {
		age := now.Sub(k.made[i])
		if len(keys) == ticketKeysKept || age < 0 || age >= ticketKeyRotation*ticketKeysKept {
			break
		}
		keys, made = append(keys, k.keys[i]), append(made, k.made[i])
	}
	k.keys, k.made = keys, made
	return keys, nil
}
