package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/pullgate/pullgate/proxy"
	"github.com/pullgate/pullgate/proxy/config"
	"github.com/pullgate/pullgate/verify"
	"github.com/pullgate/pullgate/verify/hosts"
	"github.com/pullgate/pullgate/verify/state"
)

// audit lists the runtime's images with their decision under the configuration's policy, from
// the state pullgate keeps, without asking any registry. It reads the state while the daemon
// runs, so an administrator can see what a rule would deny before switching it to enforce.
func audit(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("audit", "audit [--config FILE] [--namespace NS] [--output table|json]")
	configPath := fs.String("config", config.DefaultPath, "configuration file with the policies")
	runtimeEndpoint := fs.String("runtime-endpoint", "", "override runtimeEndpoint: unix:///path.sock")
	stateDir := fs.String("state-dir", "", "override stateDir")
	namespace := fs.String("namespace", "", "decide for this pod namespace (default: a decision that holds in every namespace)")
	output := fs.String("output", "table", "table or json")
	if err := parseFlags(fs, args, stdout, stderr); err != nil {
		return err
	}
	if fs.NArg() != 0 || (*output != "table" && *output != "json") {
		fs.Usage()
		return usageError{errors.New("audit takes no arguments; --output is table or json")}
	}
	cfg, err := config.Load(*configPath)
	if err != nil {
		return err
	}
	if *runtimeEndpoint != "" {
		cfg.RuntimeEndpoint = *runtimeEndpoint
	}
	if *stateDir != "" {
		cfg.StateDir = *stateDir
	}
	policy, err := cfg.Policy()
	if err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	st, err := state.Open(cfg.StateDir, state.ReadOnly(), state.WithLogger(logger))
	if err != nil {
		return err
	}
	conn, err := grpc.NewClient(cfg.RuntimeEndpoint, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(proxy.MaxMessageSize)))
	if err != nil {
		return fmt.Errorf("runtime endpoint %s: %w", cfg.RuntimeEndpoint, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// The resolver is never asked: Known decides from the state alone.
	verifier := verify.NewVerifier(policy, verify.NewResolver(hosts.New(cfg.RegistryConfigPath)), verify.WithState(st), verify.WithVerifierLogger(logger))
	entries, err := proxy.Audit(ctx, runtimeapi.NewImageServiceClient(conn), verifier, *namespace)
	if err != nil {
		return err
	}
	if *output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if entries == nil {
			entries = []proxy.AuditEntry{}
		}
		return enc.Encode(entries)
	}
	w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "IMAGE\tVERDICT\tRULE\tREASON")
	for _, e := range entries {
		rule := e.Rule
		if e.Mode != "" {
			rule += " (" + e.Mode + ")"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", e.Image, e.Verdict, rule, e.Reason)
	}
	return w.Flush()
}
