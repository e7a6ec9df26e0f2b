package verify

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/opencontainers/go-digest"

	"github.com/pullgate/pullgate/verify/auth"
)

// TagResolver turns a tag into the digest it points to.
type TagResolver interface {
	Resolve(ctx context.Context, img Image, cred auth.Credential) (digest.Digest, error)
}

// Decider decides whether a digest may be pulled.
type Decider interface {
	// DecideByName decides when the image's name and namespace alone settle it, before any
	// registry request; ok is false when the digest is needed.
	DecideByName(img Image, namespace string) (d Decision, ok bool)
	Verify(ctx context.Context, req Request) (Decision, error)
	// Recall returns the digest img's tag resolved to when it was last pulled and allowed.
	Recall(img Image) (digest.Digest, bool)
}

// Checked is the outcome of Check.
type Checked struct {
	Digest     digest.Digest
	Credential auth.Credential
	Decision   Decision
	// Resolve and Verify are the time spent resolving and deciding.
	Resolve, Verify time.Duration
	// Recalled is the registry's unavailability that made Digest the one the tag resolved to
	// when last pulled and allowed, rather than what it points to now; nil when resolved.
	Recalled error
}

// Check is the pull pipeline up to the runtime: it resolves img (a pinned image is its own
// digest, a tag whose registry is unavailable the digest it was last allowed at) and decides on
// that digest, trying creds in order, as kubelet tries its credentials: a
// credential the registry refuses gives way to the next. The error is the last one met.
//
// An image decided by its name alone is decided before any registry request: Checked then has
// no Digest.
func Check(ctx context.Context, r TagResolver, d Decider, img Image, namespace string, creds []auth.Credential) (Checked, error) {
	var (
		c   Checked
		err error
	)
	if dec, ok := d.DecideByName(img, namespace); ok {
		c.Decision = dec
		return c, nil
	}
	for _, c.Credential = range creds {
		start := time.Now()
		c.Digest = img.Digest
		if c.Digest == "" {
			c.Digest, err = r.Resolve(ctx, img, c.Credential)
			c.Resolve += time.Since(start)
			switch {
			case err == nil:
			case Unauthorized(err):
				continue
			case KindOf(err) == Unavailable:
				// The registry may come back; until then, a tag pulled and allowed before
				// stands for the digest it was, decided again from what the node knows.
				dg, ok := d.Recall(img)
				if !ok {
					return c, err
				}
				c.Digest, c.Recalled = dg, err
			default:
				return c, err
			}
		}
		start = time.Now()
		c.Decision, err = d.Verify(ctx, Request{Image: img, Digest: c.Digest, Namespace: namespace, Credential: c.Credential})
		c.Verify += time.Since(start)
		if err == nil || !Unauthorized(err) {
			return c, err
		}
	}
	return c, err
}

// Unauthorized tells a credential the registry refused.
func Unauthorized(err error) bool {
	var te *transport.Error
	return errors.As(err, &te) && (te.StatusCode == http.StatusUnauthorized || te.StatusCode == http.StatusForbidden)
}
