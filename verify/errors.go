package verify

import (
	"context"
	"errors"
	"net"
	"net/http"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// RegistryError is a failure to talk to a registry. Unavailable tells trouble that may pass
// (unreachable, 5xx, 429 after retries) from a definite answer (unauthorized, not found), so
// that callers can say which it was; either way the pull cannot be checked and is denied.
type RegistryError struct {
	// Op is what failed: "resolve" when empty, "verify" while fetching signatures.
	Op          string
	Image       Image
	Unavailable bool
	Err         error
}

func (e *RegistryError) Error() string {
	op := e.Op
	if op == "" {
		op = "resolve"
	}
	return op + " " + e.Image.String() + ": " + e.Err.Error()
}
func (e *RegistryError) Unwrap() error { return e.Err }

func registryError(img Image, err error) error {
	return &RegistryError{Image: img, Unavailable: unavailable(err), Err: err}
}

func unavailable(err error) bool {
	var te *transport.Error
	if errors.As(err, &te) {
		return te.StatusCode == http.StatusTooManyRequests || te.StatusCode >= 500
	}
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, context.DeadlineExceeded)
}
