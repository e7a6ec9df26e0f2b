package verify

import (
	"context"
	"fmt"

	"github.com/opencontainers/go-digest"

	"github.com/pullgate/pullgate/verify/auth"
)

// Action is what happens to an image that no policy rule matches.
type Action string

const (
	Deny  Action = "deny"
	Allow Action = "allow"
)

// DefaultRule names the decision taken for images that match no rule.
const DefaultRule = "defaultAction"

// Request is one pull to decide on: the resolved digest, never a tag.
type Request struct {
	Image     Image
	Digest    digest.Digest
	Namespace string
	// Credential is the one the pull uses; signatures are fetched with it too.
	Credential auth.Credential
}

// Decision is the outcome for one digest.
type Decision struct {
	Allowed bool
	// Rule is the name of the rule that decided, or DefaultRule.
	Rule string
	// Reason says, in one line a person can act on, why the pull was denied.
	Reason string
}

// Policy decides pulls. Until signature rules are configured, every image falls to the
// default action, which denies unless the node administrator chose to allow.
type Policy struct {
	DefaultAction Action
}

// Verify decides req.
func (p *Policy) Verify(_ context.Context, req Request) (Decision, error) {
	if p.DefaultAction == Allow {
		return Decision{Allowed: true, Rule: DefaultRule}, nil
	}
	return Decision{Rule: DefaultRule, Reason: fmt.Sprintf("no policy matches %s and defaultAction is %s; add a policy for it or set defaultAction: allow", req.Image.Name(), Deny)}, nil
}
