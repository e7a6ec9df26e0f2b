package verify

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"syscall"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/sigstore/cosign/v2/pkg/oci"

	"github.com/pullgate/pullgate/verify/registry"
)

// Kind sorts every error of resolution and verification into what kubelet is told: the error
// contract of DESIGN.md. Whatever the kind, the pull is not allowed.
type Kind int

const (
	// Failed is a definite answer that is neither a denial nor unavailability (the registry
	// said not found or unauthorized, its certificate does not verify, hosts.toml is wrong), or
	// pullgate's own fault. kubelet reports it as it reports containerd's pull errors.
	Failed Kind = iota
	// Denied is an image that cannot prove itself within pullgate's bounds (too many signatures,
	// too many bytes, a manifest too large) or whose registry sends pullgate where it may not go.
	Denied
	// Unavailable is a registry that could not be reached, or answered 5xx or 429 beyond the
	// retries: trouble that may pass. Only this kind may fall back to a decision stored earlier.
	Unavailable
)

// KindOf returns the kind of err.
func KindOf(err error) Kind {
	var (
		de *Denial
		re *registry.RefusedError
	)
	if errors.As(err, &de) || errors.As(err, &re) {
		return Denied
	}
	var rerr *RegistryError
	if errors.As(err, &rerr) {
		if rerr.Unavailable {
			return Unavailable
		}
		return Failed
	}
	if unavailable(err) {
		return Unavailable
	}
	return Failed
}

// RegistryError is a failure to talk to a registry. Unavailable tells trouble that may pass
// from a definite answer, so that callers can say which it was; either way the pull cannot be
// checked and is denied.
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

// Denial is something about the image itself that denies the pull rather than leaving it
// unchecked: more to fetch than the bounds allow (an image should not need that much to prove
// itself), or an index whose manifest for this node cannot be told.
type Denial struct{ Reason string }

func (e *Denial) Error() string { return e.Reason }

// unavailable tells trouble that may pass from a definite answer: only timeouts, refused or
// reset connections, unreachable hosts and networks, temporary DNS failures, 5xx and 429. A
// certificate that does not verify, a name that does not exist, or pullgate's own refusal of
// an address or a downgrade is a definite answer: a node facing a man in the middle must not
// fall back to what it verified before.
func unavailable(err error) bool {
	if err == nil {
		return false
	}
	var te *transport.Error
	if errors.As(err, &te) {
		return te.StatusCode == http.StatusTooManyRequests || te.StatusCode >= 500
	}
	var de *Denial
	if errors.As(err, &de) {
		return false
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	for _, errno := range []syscall.Errno{syscall.ECONNREFUSED, syscall.ECONNRESET, syscall.ECONNABORTED,
		syscall.EHOSTUNREACH, syscall.ENETUNREACH, syscall.EHOSTDOWN, syscall.ENETDOWN, syscall.ETIMEDOUT, syscall.EPIPE} {
		if errors.Is(err, errno) {
			return true
		}
	}
	var dns *net.DNSError
	if errors.As(err, &dns) {
		return dns.IsTimeout || dns.IsTemporary
	}
	// A connection closed before the whole response came: a registry going down, or a proxy on
	// the way dropping it.
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// boundError turns the bounds that libraries enforce themselves into denials that name the
// bound, and returns any other error as it is.
func boundError(err error) error {
	var ml *oci.MaxLayersExceeded
	if errors.As(err, &ml) {
		return &Denial{"signature manifest refused: " + ml.Error() + " (signatures per image are bounded by verification.maxSignatures)"}
	}
	return err
}
