// Command snigate is the transparent TLS egress gateway: it steers a LAN's
// outbound TLS into its dataplane, splices the hosts the policy names and
// bumps the rest.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"

	"github.com/snigate/snigate/bpf"
	"github.com/snigate/snigate/dataplane"
	gwtls "github.com/snigate/snigate/tls"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `usage: snigate <command> [flags]

commands:
  run --config FILE         run the gateway
  check --config FILE       validate a configuration file (and its CA) and exit
  status [--json]           show the running daemon's attachments and counters
  reload                    make the running daemon re-read its configuration
  cleanup --config FILE     remove what a killed daemon left (filters, routing rules)
  ca init --out DIR         create a new gateway CA (ca.crt, ca.key, ca.der)
  ca import --cert FILE     take over an existing CA (e.g. Squid's key+cert PEM)
  ca export --pem|--der     print the gateway CA certificate for client trust stores
  version                   print the version

Run "snigate <command> --help" for a command's flags.
`

func main() {
	os.Exit(dispatch(os.Args[1:], os.Stdout, os.Stderr))
}

// dispatch runs one command and returns the process exit code.
func dispatch(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "run":
		err = cmdRun(args[1:], stderr)
	case "check":
		err = cmdCheck(args[1:], stdout)
	case "ca":
		err = cmdCA(args[1:], stdout)
	case "status":
		err = cmdStatus(args[1:], stdout)
	case "reload":
		err = cmdReload(args[1:], stdout)
	case "cleanup":
		err = cmdCleanup(args[1:], stdout)
	case "version", "--version":
		fmt.Fprintf(stdout, "snigate %s\n", version)
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "snigate: unknown command %q\n%s", args[0], usage)
		return 2
	}
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	var ue usageError
	if errors.As(err, &ue) {
		if !ue.printed {
			fmt.Fprintf(stderr, "snigate: %v\n", err)
		}
		return 2
	}
	if err != nil {
		fmt.Fprintf(stderr, "snigate: %v\n", err)
		return 1
	}
	return 0
}

// usageError marks a mistake in the command line rather than in the work.
// printed says the flag package has already shown it, with the usage.
type usageError struct {
	error
	printed bool
}

func newFlagSet(name string, out io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(out)
	return fs
}

func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{error: err, printed: true}
	}
	if fs.NArg() > 0 {
		return usageError{error: fmt.Errorf("%s: unexpected argument %q", fs.Name(), fs.Arg(0))}
	}
	return nil
}

func cmdCheck(args []string, stdout io.Writer) error {
	fs := newFlagSet("check", stdout)
	path := fs.String("config", defaultConfigPath, "configuration `file` to validate")
	offline := fs.Bool("offline", false,
		"do not look for the configured interfaces on this host (for a config made for another)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg, err := LoadConfig(*path)
	if err != nil {
		return err
	}
	if err := checkFiles(cfg); err != nil {
		return fmt.Errorf("%s: %w", *path, err)
	}
	if !*offline {
		for _, name := range cfg.Intercept.Interfaces {
			if _, err := net.InterfaceByName(name); err != nil {
				return fmt.Errorf("%s: intercept.interfaces: no interface %q on this host "+
					"(use --offline to check a config for another host)", *path, name)
			}
		}
	}
	fmt.Fprintf(stdout, "%s: ok (%s, interfaces %v, ports %v)\n", *path,
		plural(len(cfg.Policy.Rules), "rule"), cfg.Intercept.Interfaces, cfg.ports())
	return nil
}

// cmdCleanup removes the steering state a killed daemon can leave: the
// legacy tc filters and the policy routing, and the TIME_WAIT sockets of
// its intercepted flows. The unit runs it after every stop; nothing is
// left to remove after a clean one.
func cmdCleanup(args []string, stdout io.Writer) error {
	fs := newFlagSet("cleanup", stdout)
	path := fs.String("config", defaultConfigPath, "configuration `file` of the daemon")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg, err := LoadConfig(*path)
	if err != nil {
		return err
	}
	if err := bpf.Cleanup(cfg.steeringConfig()); err != nil {
		return err
	}
	_, err = dataplane.ReleaseTimeWait(cfg.ports())
	return err
}

// checkFiles loads the files the configuration names, as run would.
func checkFiles(cfg *Config) error {
	if _, err := gwtls.LoadRoots(cfg.Upstream.Roots); err != nil {
		return fmt.Errorf("upstream.roots: %w", err)
	}
	if cfg.usesBump() {
		if _, err := loadCA(cfg); err != nil {
			return err
		}
	}
	return nil
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
