// Command benchload is the load generator of scripts/bench.sh. It runs in the
// lab's client namespace and dials the lab servers' addresses directly: the
// gateway under test (plain forwarding, snigate or Squid) intercepts
// transparently. Each measuring command does one bounded run and prints its
// result as one JSON line on stdout; "benchload report" reads those lines
// and prints the comparison table.
//
// When --gw-pid names the gateway's process, the commands also read its CPU
// time, memory and descriptors from /proc (the process and all its
// descendants, so Squid's workers and helpers count too); /proc is shared
// across network namespaces.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

const usage = `usage:
  benchload probe    --addr IP:PORT --sni NAME --ca FILE [--wait 15s]
  benchload download --addr IP:PORT --sni NAME --ca FILE --bytes N [--streams K]
  benchload conns    --addr IP:PORT --sni NAME --ca FILE --concurrency C --duration D
  benchload newnames --addr IP:PORT --ca FILE --prefix TAG --count N
  benchload tunnels  --addr IP:PORT --sni NAME --ca FILE --count N [--metrics URL]
  benchload report   --results FILE

Measuring commands also take --gw-pid PID (0: no gateway process, as for
plain forwarding) and --system, --test, --rep, which are copied into the
JSON result. Run "benchload COMMAND -h" for every flag.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	var err error
	switch cmd, args := os.Args[1], os.Args[2:]; cmd {
	case "probe":
		err = runProbe(ctx, args)
	case "download":
		err = runDownload(ctx, args)
	case "conns":
		err = runConns(ctx, args)
	case "newnames":
		err = runNewNames(ctx, args)
	case "tunnels":
		err = runTunnels(ctx, args)
	case "report":
		err = runReport(args)
	case "help", "-h", "--help":
		fmt.Print(usage)
		return
	default:
		fmt.Fprintf(os.Stderr, "benchload: unknown command %q\n%s", cmd, usage)
		os.Exit(2)
	}
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "benchload %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}
