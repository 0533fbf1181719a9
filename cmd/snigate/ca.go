package main

import (
	"fmt"
	"io"

	gwtls "github.com/snigate/snigate/tls"
)

func cmdCA(args []string, stdout io.Writer) error {
	if len(args) == 0 || args[0] != "init" {
		return usageError{fmt.Errorf("ca: want a subcommand: init")}
	}
	fs := newFlagSet("ca init", stdout)
	dir := fs.String("out", "/var/lib/snigate", "`directory` for ca.crt, ca.key and ca.der")
	if err := parseFlags(fs, args[1:]); err != nil {
		return err
	}
	ca, err := gwtls.InitCA(*dir)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "created CA %q in %s (valid until %s)\n",
		ca.Cert.Subject.CommonName, *dir, ca.Cert.NotAfter.Format("2006-01-02"))
	return nil
}

func loadCA(cfg *Config) (*gwtls.CA, error) {
	return gwtls.LoadCA(cfg.CA.Cert, cfg.CA.Key)
}
