// Command pullgate is the CRI image gate: see README.md.
package main

import (
	"errors"
	"flag"
	"fmt"
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

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	switch cmd, args := os.Args[1], os.Args[2:]; cmd {
	case "serve":
		err = serve(args)
	case "verify":
		os.Exit(verifyImage(args, os.Stdout))
	case "audit":
		err = audit(args, os.Stdout)
	case "check-config":
		err = checkConfig(args)
	case "install":
		err = installCmd(args)
	case "uninstall":
		err = uninstallCmd(args)
	case "version", "--version":
		fmt.Println("pullgate", versionString())
	case "help", "-h", "--help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "pullgate: unknown command %q\n\n%s", cmd, usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "pullgate:", err)
		var ue usageError
		if errors.As(err, &ue) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

type usageError struct{ error }

func versionString() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}

func checkConfig(args []string) error {
	fs := flag.NewFlagSet("check-config", flag.ContinueOnError)
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	path := config.DefaultPath
	switch fs.NArg() {
	case 0:
	case 1:
		path = fs.Arg(0)
	default:
		return usageError{errors.New("usage: pullgate check-config [FILE]")}
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
		fmt.Fprintf(os.Stderr, "%s: %d problem(s):\n", path, len(problems))
		for _, p := range problems {
			fmt.Fprintf(os.Stderr, "  - %v\n", p)
		}
		return fmt.Errorf("%s is not valid", path)
	}
	fmt.Printf("%s: ok\n", path)
	return nil
}
