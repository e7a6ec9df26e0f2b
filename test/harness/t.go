package harness

import (
	"fmt"
	"os"
	"slices"
	"sync"
)

// T is the part of testing.TB the harness uses, so that programs such as `make demo` and
// `make bench` can start the same real parts outside `go test`.
type T interface {
	Helper()
	Cleanup(func())
	Error(args ...any)
	Errorf(format string, args ...any)
	Fatal(args ...any)
	Fatalf(format string, args ...any)
	Logf(format string, args ...any)
	Failed() bool
	Skip(args ...any)
}

// Program is a T for a main function: failures print and exit, after the cleanups have run.
type Program struct {
	mu       sync.Mutex
	cleanups []func()
	failed   bool
}

var _ T = (*Program)(nil)

func (p *Program) Helper() {}

func (p *Program) Cleanup(f func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cleanups = append(p.cleanups, f)
}

// Close runs the cleanups, last registered first.
func (p *Program) Close() {
	p.mu.Lock()
	fs := slices.Clone(p.cleanups)
	p.cleanups = nil
	p.mu.Unlock()
	for _, f := range slices.Backward(fs) {
		f()
	}
}

func (p *Program) Error(args ...any) {
	p.mu.Lock()
	p.failed = true
	p.mu.Unlock()
	fmt.Fprintln(os.Stderr, args...)
}

func (p *Program) Errorf(format string, args ...any) { p.Error(fmt.Sprintf(format, args...)) }

func (p *Program) Fatal(args ...any) {
	p.Error(args...)
	p.Close()
	os.Exit(1)
}

func (p *Program) Fatalf(format string, args ...any) { p.Fatal(fmt.Sprintf(format, args...)) }

func (p *Program) Skip(args ...any) { p.Fatal(args...) }

func (p *Program) Logf(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }

func (p *Program) Failed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.failed
}
