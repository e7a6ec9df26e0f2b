package verify

import (
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
	// AllNamespaces asks Known for a decision that holds in every namespace, for callers that
	// name none.
	AllNamespaces bool
}

// Decision is the outcome for one digest.
type Decision struct {
	Allowed bool
	// Rule is the name of the rule that decided, or DefaultRule.
	Rule string
	Mode Mode
	// Reason says, in one line a person can act on, why the pull was denied, or, in warn mode,
	// what failed although the pull was allowed.
	Reason string
	// Authorities holds each authority's result, in the rule's order.
	Authorities []AuthorityResult
	// Cached is set when the decision came from the verification cache, Shared when it came
	// from a verification another pull of the same digest was running.
	Cached, Shared bool
	// Stored is set when the decision came from the node's state: a decision stored earlier,
	// or stored evidence checked again.
	Stored bool
	// Unknown is set by Known when the digest was never verified on this node under the rule.
	Unknown bool
}

// AuthorityResult is one authority's verdict on an image's signatures.
type AuthorityResult struct {
	Name     string
	Verified bool
	// Reason says what was looked for and what was found when Verified is false.
	Reason string
}
