// Command labserver plays the internet for the snigate network-namespace lab.
//
// It writes the lab's certificates (a "public" root that clients and the
// gateway trust, leaves signed by it, and deliberately broken leaves) and
// serves HTTPS, WebSocket echo and plain TCP echo on the lab server
// addresses. scripts/lab.sh runs it inside the servers namespace.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

const usage = `usage:
  labserver certs --dir DIR
  labserver serve --dir DIR --listen ADDR[,ADDR...] [--tcp-echo ADDR[,ADDR...]]
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}

	var err error
	switch cmd, args := os.Args[1], os.Args[2:]; cmd {
	case "certs":
		err = runCerts(args)
	case "serve":
		err = runServe(args)
	case "help", "-h", "--help":
		fmt.Print(usage)
		return
	default:
		fmt.Fprintf(os.Stderr, "labserver: unknown command %q\n%s", cmd, usage)
		os.Exit(2)
	}
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "labserver: %v\n", err)
		os.Exit(1)
	}
}

func runCerts(args []string) error {
	fs := flag.NewFlagSet("certs", flag.ContinueOnError)
	dir := fs.String("dir", "", "directory to write certificates and keys into")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" || fs.NArg() > 0 {
		return fmt.Errorf("certs: need --dir and no positional arguments\n%s", usage)
	}

	if err := os.MkdirAll(*dir, 0o755); err != nil {
		return err
	}
	return writeCerts(*dir, time.Now())
}

func runServe(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	dir := fs.String("dir", "", "directory holding the certificates written by 'certs'")
	listen := fs.String("listen", "", "comma-separated addresses to serve HTTPS on")
	echo := fs.String("tcp-echo", "", "comma-separated addresses to serve plain TCP echo on")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" || *listen == "" || fs.NArg() > 0 {
		return fmt.Errorf("serve: need --dir and --listen and no positional arguments\n%s", usage)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	return serve(ctx, *dir, splitList(*listen), splitList(*echo))
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}
