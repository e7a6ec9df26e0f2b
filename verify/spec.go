package verify

import "time"

// Mode is what a rule does with an image it matches.
type Mode string

const (
	// Enforce allows the pull only when the rule's signatures and attestations verify.
	Enforce Mode = "enforce"
	// Warn verifies, logs and counts failures, and allows the pull.
	Warn Mode = "warn"
	// Skip allows the pull without verifying.
	Skip Mode = "skip"
)

// RuleSpec is one policy rule as the configuration file spells it.
type RuleSpec struct {
	Name string `json:"name"`
	// Images are globs over "registry/repository": '*' within a path segment, '**' across.
	Images []string `json:"images"`
	// Namespaces are globs over the pod's namespace. A rule with namespaces never matches a pull
	// without one (crictl, static pods without a sandbox config).
	Namespaces []string `json:"namespaces,omitempty"`
	Mode       Mode     `json:"mode"`
	// Authorities: a signature from any one of them is enough.
	Authorities []AuthoritySpec `json:"authorities,omitempty"`
	// Attestations: all must hold, each signed by one of the authorities.
	Attestations []AttestationSpec `json:"attestations,omitempty"`
	// BindRepository requires the signature's docker-reference to name the image's repository,
	// so that a signature copied from another repository does not count.
	BindRepository bool `json:"bindRepository,omitempty"`
	// SignedLevel is where a multi-platform image's signature must be: on the index (the digest
	// pulled, the default), or, with platform, on the index or on the manifest of the node's
	// platform.
	SignedLevel string `json:"signedLevel,omitempty"`
}

// Signed levels of RuleSpec.SignedLevel.
const (
	SignedIndex    = "index"
	SignedPlatform = "platform"
)

// AuthoritySpec is one trusted signer. Exactly one of Key, Keyless and Certificate is set.
type AuthoritySpec struct {
	Name        string           `json:"name"`
	Key         *KeySpec         `json:"key,omitempty"`
	Keyless     *IdentitySpec    `json:"keyless,omitempty"`
	Certificate *CertificateSpec `json:"certificate,omitempty"`
	// IgnoreTransparencyLog accepts signatures without a transparency-log proof, for signers
	// that never upload to one (air-gapped keys, private CAs).
	IgnoreTransparencyLog bool `json:"ignoreTransparencyLog,omitempty"`
}

// KeySpec is a PEM public key (ECDSA P-256/P-384, RSA or Ed25519), from a file or inline.
type KeySpec struct {
	File string `json:"file,omitempty"`
	Data string `json:"data,omitempty"`
}

// IdentitySpec matches a signing certificate's identity: the OIDC issuer (Fulcio's extension)
// and the subject (SAN: email or URI), each plain or as a regular expression.
type IdentitySpec struct {
	Issuer        string `json:"issuer,omitempty"`
	IssuerRegExp  string `json:"issuerRegExp,omitempty"`
	Subject       string `json:"subject,omitempty"`
	SubjectRegExp string `json:"subjectRegExp,omitempty"`
}

// CertificateSpec trusts signing certificates issued by a private CA.
type CertificateSpec struct {
	// Roots and Intermediates are PEM files.
	Roots         string `json:"roots"`
	Intermediates string `json:"intermediates,omitempty"`
	IdentitySpec
}

// AttestationSpec requires an in-toto attestation of PredicateType signed by one of the rule's
// authorities, whose predicate satisfies Condition (CEL over `predicate`), when set.
type AttestationSpec struct {
	Name          string `json:"name"`
	PredicateType string `json:"predicateType"`
	Condition     string `json:"condition,omitempty"`
}

// Settings bound verification.
type Settings struct {
	Timeout  time.Duration
	CacheTTL time.Duration
	// TrustedRoot is a sigstore trusted_root.json: Fulcio CAs, Rekor and CT log keys.
	TrustedRoot string
	// MaxSignatures and MaxBytes bound what one verification fetches; beyond them it denies.
	MaxSignatures int
	MaxBytes      int64
}
