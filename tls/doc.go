// Package tls holds everything snigate does with certificates and TLS
// sessions: it creates and loads the gateway CA, loads the roots used to
// verify real servers, forges and caches leaf certificates signed by the CA,
// and bumps a connection: verify the upstream, terminate the client's TLS
// with a forged certificate, then proxy the plaintext request by request
// with net/http where it is HTTP (so headers can be added and each request
// reported), and relay it raw otherwise.
//
// The package shares its name with crypto/tls. Inside it, tls.X always means
// the standard library; importers alias this package as gwtls.
package tls
