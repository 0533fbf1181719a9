// Command labclient is the lab's WebSocket client: it opens a wss:// URL
// through a fixed address, checks that messages echo back, and prints one
// line saying which certificate issuer it saw. scripts/demo.sh runs it in the
// client namespace.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/coder/websocket"
)

func main() {
	url := flag.String("url", "", "wss:// `URL` to open")
	addr := flag.String("addr", "", "connect to this `ip:port` instead of resolving the URL's host")
	caFile := flag.String("ca", "", "PEM `file` of the roots to trust")
	count := flag.Int("n", 3, "messages to echo")
	flag.Parse()
	if err := run(*url, *addr, *caFile, *count); err != nil {
		fmt.Fprintln(os.Stderr, "labclient:", err)
		os.Exit(1)
	}
}

func run(url, addr, caFile string, count int) error {
	if url == "" || caFile == "" {
		return errors.New("--url and --ca are required")
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return fmt.Errorf("%s holds no certificate", caFile)
	}
	issuer := ""
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{
			RootCAs: roots,
			VerifyConnection: func(cs tls.ConnectionState) error {
				issuer = cs.PeerCertificates[0].Issuer.CommonName
				return nil
			},
		},
		DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
			if addr != "" {
				a = addr
			}
			return (&net.Dialer{}).DialContext(ctx, network, a)
		},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{
		HTTPClient: &http.Client{Transport: tr},
	})
	if err != nil {
		return fmt.Errorf("dial %s: %w", url, err)
	}
	defer ws.CloseNow()
	for i := range count {
		msg := fmt.Sprintf("message %d", i)
		if err := ws.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			return fmt.Errorf("write: %w", err)
		}
		_, got, err := ws.Read(ctx)
		if err != nil {
			return fmt.Errorf("read: %w", err)
		}
		if string(got) != msg {
			return fmt.Errorf("echo %q, want %q", got, msg)
		}
	}
	ws.Close(websocket.StatusNormalClosure, "")
	fmt.Printf("issuer=%q echoed=%d\n", issuer, count)
	return nil
}
