package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"

	"github.com/pullgate/pullgate/proxy/config"
	"github.com/pullgate/pullgate/verify"
	"github.com/pullgate/pullgate/verify/auth"
	"github.com/pullgate/pullgate/verify/hosts"
)

// Exit codes of `pullgate verify`, for CI pipelines.
const (
	exitAllowed   = 0
	exitDenied    = 1
	exitUndecided = 2
)

type stringList []string

func (l *stringList) String() string     { return fmt.Sprint(*l) }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

// verifyImage runs the pull pipeline without a runtime: resolve, match a rule, verify, and
// print why the image would be allowed or denied.
func verifyImage(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("verify", "verify [--config FILE] [--namespace NS] [--auth-file FILE] IMAGE")
	configPath := fs.String("config", config.DefaultPath, "configuration file with the policies")
	namespace := fs.String("namespace", "", "pod namespace, for rules scoped to namespaces")
	var authFiles stringList
	fs.Var(&authFiles, "auth-file", "docker config.json with registry credentials (repeatable; added to auth.files)")
	switch err := parseFlags(fs, args, stdout, stderr); {
	case errors.Is(err, flag.ErrHelp):
		return 0
	case err != nil:
		fmt.Fprintln(stderr, "pullgate verify:", err)
		return exitUndecided
	case fs.NArg() != 1:
		fs.Usage()
		return exitUndecided
	}
	fail := func(err error) int {
		fmt.Fprintln(stderr, "pullgate verify:", err)
		return exitUndecided
	}
	cfg, err := config.Load(*configPath)
	if err != nil {
		return fail(err)
	}
	img, err := verify.ParseImage(fs.Arg(0))
	if err != nil {
		return fail(err)
	}
	policy, err := cfg.Policy()
	if err != nil {
		return fail(err)
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	resolver := verify.NewResolver(hosts.New(cfg.RegistryConfigPath), verify.WithResolveTimeout(cfg.Verification.Timeout.Duration), verify.WithResolveLogger(logger))
	creds, err := auth.NewKeyring(append(cfg.Auth.Files, authFiles...)).Lookup(img.Name())
	if err != nil {
		logger.Warn("credential files have problems", "error", err)
	}
	creds = append(creds, auth.Credential{})

	checked, err := verify.Check(context.Background(), resolver, verify.NewVerifier(policy, resolver), img, *namespace, creds)
	if err != nil {
		return fail(fmt.Errorf("could not be checked: %w", err))
	}
	d, dgst := checked.Decision, checked.Digest
	verdict, code := "allowed", exitAllowed
	switch {
	case !d.Allowed:
		verdict, code = "denied", exitDenied
	case d.Reason != "":
		verdict = "allowed (warn mode: verification failed)"
	}
	if dgst == "" {
		// Decided by the name alone: the registry was not asked.
		dgst = "(not resolved: no rule needs it)"
	}
	fmt.Fprintf(stdout, "image:    %s\ndigest:   %s\nrule:     %s", img, dgst, d.Rule)
	if d.Mode != "" {
		fmt.Fprintf(stdout, " (%s)", d.Mode)
	}
	fmt.Fprintf(stdout, "\ndecision: %s\n", verdict)
	for _, a := range d.Authorities {
		if a.Verified {
			fmt.Fprintf(stdout, "  authority %s: verified\n", a.Name)
		} else {
			fmt.Fprintf(stdout, "  authority %s: %s\n", a.Name, a.Reason)
		}
	}
	// The authorities' findings are listed above; what else failed (attestations, bounds) is not.
	if d.Reason != "" && (len(d.Authorities) == 0 || d.Authorities[len(d.Authorities)-1].Verified) {
		fmt.Fprintf(stdout, "reason:   %s\n", d.Reason)
	}
	return code
}
