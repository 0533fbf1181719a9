package main

import (
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"

	gwtls "github.com/snigate/snigate/tls"
)

func cmdCA(args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return usageError{error: errors.New("ca: want a subcommand: init, import or export")}
	}
	switch args[0] {
	case "-h", "-help", "--help":
		fmt.Fprint(stdout, "usage: snigate ca init|import|export [flags]; "+
			"\"snigate ca <subcommand> --help\" lists a subcommand's flags\n")
		return nil
	case "init":
		return cmdCAInit(args[1:], stdout)
	case "export":
		return cmdCAExport(args[1:], stdout)
	case "import":
		return cmdCAImport(args[1:], stdout)
	}
	return usageError{error: fmt.Errorf("ca: unknown subcommand %q, want init, import or export",
		args[0])}
}

func cmdCAInit(args []string, stdout io.Writer) error {
	fs := newFlagSet("ca init", stdout)
	dir := fs.String("out", "/var/lib/snigate", "`directory` for ca.crt, ca.key and ca.der")
	if err := parseFlags(fs, args); err != nil {
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

// cmdCAImport takes over an existing CA, checking it as the daemon would,
// and writes it in snigate's layout.
func cmdCAImport(args []string, stdout io.Writer) error {
	fs := newFlagSet("ca import", stdout)
	cert := fs.String("cert", "", "PEM `file` with the CA certificate (may also hold the key)")
	key := fs.String("key", "", "PEM `file` with the CA key (default: the --cert file)")
	dir := fs.String("out", "/var/lib/snigate", "`directory` for ca.crt, ca.key and ca.der")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *cert == "" {
		return usageError{error: errors.New("ca import: --cert is required")}
	}
	if *key == "" {
		*key = *cert
	}
	ca, err := gwtls.LoadCA(*cert, *key)
	if err != nil {
		return err
	}
	if err := gwtls.WriteCA(ca, *dir); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "imported CA %q into %s (valid until %s)\n",
		ca.Cert.Subject.CommonName, *dir, ca.Cert.NotAfter.Format("2006-01-02"))
	return nil
}

// cmdCAExport prints the CA certificate of the configuration, so that the
// certificate clients import is always the one the daemon signs with.
func cmdCAExport(args []string, stdout io.Writer) error {
	fs := newFlagSet("ca export", stdout)
	path := fs.String("config", defaultConfigPath, "configuration `file` naming the CA")
	der := fs.Bool("der", false, "DER (binary) output, for Windows certificate import")
	asPEM := fs.Bool("pem", false, "PEM output (the default)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *der && *asPEM {
		return usageError{error: errors.New("ca export: --der and --pem exclude each other")}
	}
	cfg, err := LoadConfig(*path)
	if err != nil {
		return err
	}
	ca, err := loadCA(cfg)
	if err != nil {
		return err
	}
	if *der {
		_, err = stdout.Write(ca.Cert.Raw)
		return err
	}
	return pem.Encode(stdout, &pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw})
}

// loadCA loads the configuration's CA; a missing file gets a hint, since it
// is what a fresh install runs into.
func loadCA(cfg *Config) (*gwtls.CA, error) {
	ca, err := gwtls.LoadCA(cfg.CA.Cert, cfg.CA.Key)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("ca: %w (the policy bumps, so it needs a CA: create one with "+
			"\"snigate ca init --out %s\" or import one with \"snigate ca import --cert FILE\")",
			err, filepath.Dir(cfg.CA.Cert))
	}
	if err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	return ca, nil
}
