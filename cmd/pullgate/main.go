// Command pullgate is the CRI image gate: see README.md.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"

	"github.com/pullgate/pullgate/proxy/config"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = ""

const usage = `usage: pullgate <command> [flags]

commands:
  serve          serve the CRI on a Unix socket in front of the runtime
  verify         check an image against the policy without a runtime (exit 0 allowed, 1 denied, 2 undecided)
  audit          list the runtime's images with their decision under the policy (allowed, warned, denied, unknown)
  check-config   validate a configuration file and report every problem
  install        install pullgate on this node (or --host-root) and point kubelet at it
  uninstall      point kubelet back, stop pullgate and restore every file install changed
  version        print the version
`

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

// run runs the command in args and returns pullgate's exit status: 0 on success (and for
// --help), 2 for a usage mistake, 1 for any other failure; verify has its own.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch cmd, args := args[0], args[1:]; cmd {
	case "serve":
		err = serve(args, stdout, stderr)
	case "verify":
		return verifyImage(args, stdout, stderr)
	case "audit":
		err = audit(args, stdout, stderr)
	case "check-config":
		err = checkConfig(args, stdout, stderr)
	case "install":
		err = installCmd(args, stdout, stderr)
	case "uninstall":
		err = uninstallCmd(args, stdout, stderr)
	case "version", "--version":
		err = versionCmd(args, stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "pullgate: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return 0
	}
	fmt.Fprintln(stderr, "pullgate:", err)
	var ue usageError
	if errors.As(err, &ue) {
		return 2
	}
	return 1
}

type usageError struct{ error }

// newFlags returns the flag set of a command whose usage line is synopsis.
func newFlags(name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: pullgate "+synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args. -h and --help print the command's usage on stdout and return
// flag.ErrHelp, for which pullgate exits 0, as a request for help is no mistake; other
// mistakes print it on stderr. Later usage messages go to stderr.
func parseFlags(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		fs.SetOutput(stdout)
		fs.Usage()
		return err
	case err != nil:
		fs.SetOutput(stderr)
		fs.Usage()
		return usageError{err}
	}
	fs.SetOutput(stderr)
	return nil
}

func versionString() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}

func versionCmd(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("version", "version")
	if err := parseFlags(fs, args, stdout, stderr); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		fs.Usage()
		return usageError{errors.New("version takes no arguments")}
	}
	fmt.Fprintln(stdout, "pullgate", versionString())
	return nil
}

func checkConfig(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("check-config", "check-config [FILE] (default "+config.DefaultPath+")")
	if err := parseFlags(fs, args, stdout, stderr); err != nil {
		return err
	}
	path := config.DefaultPath
	switch fs.NArg() {
	case 0:
	case 1:
		path = fs.Arg(0)
	default:
		fs.Usage()
		return usageError{errors.New("check-config takes at most one file")}
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	c, err := config.Parse(data)
	if err == nil {
		err = c.Validate()
	}
	if err != nil {
		problems := []error{err}
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			problems = j.Unwrap()
		}
		fmt.Fprintf(stderr, "%s: %d problem(s):\n", path, len(problems))
		for _, p := range problems {
			fmt.Fprintf(stderr, "  - %v\n", p)
		}
		return fmt.Errorf("%s is not valid", path)
	}
	fmt.Fprintf(stdout, "%s: ok\n", path)
	return nil
}
