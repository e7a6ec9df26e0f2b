package verify

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"

	"github.com/google/cel-go/cel"
	"github.com/sigstore/cosign/v2/pkg/cosign"
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
)

// Policy is the compiled form of the configuration's rules: ordered, first match decides.
type Policy struct {
	rules         []*rule
	defaultAction Action
	settings      Settings
}

type rule struct {
	name         string
	images       []glob
	namespaces   []glob
	mode         Mode
	authorities  []*authority
	attestations []*attestation
	bindRepo     bool
	// platformLevel accepts a signature on the node's platform manifest of an unsigned index.
	platformLevel bool
	// hash identifies the rule's content, key material included, for the verification cache.
	hash string
}

type authority struct {
	name string
	// kind says what was looked for, in denial messages: "key", "keyless", "certificate".
	kind string
	// opts verify the .sig and .att formats, bundle the sigstore bundles among the referrers.
	opts   cosign.CheckOpts
	bundle *bundleCheck
}

type attestation struct {
	name, predicateType string
	program             cel.Program
}

// CompilePolicy checks and compiles rules: globs, regular expressions, keys, certificates, the
// trusted root and CEL conditions. It reports every problem at once, each with its path.
func CompilePolicy(specs []RuleSpec, defaultAction Action, s Settings) (*Policy, error) {
	p := &Policy{defaultAction: defaultAction, settings: s}
	var errs []error
	add := func(path, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", path, fmt.Sprintf(format, args...)))
	}
	if defaultAction != Deny && defaultAction != Allow {
		add("defaultAction", "must be deny or allow, got %q", defaultAction)
	}
	var trusted root.TrustedMaterial
	needRoot := func() root.TrustedMaterial {
		if trusted != nil || s.TrustedRoot == "" {
			return trusted
		}
		tr, err := root.NewTrustedRootFromPath(s.TrustedRoot)
		if err != nil {
			add("verification.trustedRoot", "%v", err)
			s.TrustedRoot = ""
			return nil
		}
		trusted = tr
		return trusted
	}
	env, envErr := cel.NewEnv(cel.Variable("predicate", cel.DynType))
	if envErr != nil {
		return nil, envErr
	}
	var rootContent []byte
	if s.TrustedRoot != "" {
		// Read here too for the cache identity; a file that cannot be read is reported where the
		// trusted root is loaded.
		rootContent, _ = os.ReadFile(s.TrustedRoot)
	}
	names := map[string]bool{}
	for i, spec := range specs {
		path := fmt.Sprintf("policies[%d]", i)
		r := &rule{name: spec.Name, mode: spec.Mode, bindRepo: spec.BindRepository, platformLevel: spec.SignedLevel == SignedPlatform}
		if spec.SignedLevel != "" && spec.SignedLevel != SignedIndex && spec.SignedLevel != SignedPlatform {
			add(path+".signedLevel", "must be index or platform, got %q", spec.SignedLevel)
		}
		h := sha256.New()
		json.NewEncoder(h).Encode(spec)
		// A rotated trusted root or tightened bounds must re-check what was verified before.
		json.NewEncoder(h).Encode(struct {
			MaxSignatures int
			MaxBytes      int64
		}{s.MaxSignatures, s.MaxBytes})
		h.Write(rootContent)
		switch {
		case spec.Name == "":
			add(path+".name", "must be set: denials and metrics name the rule")
		case spec.Name == DefaultRule:
			add(path+".name", "%q is reserved for images that match no rule", DefaultRule)
		case names[spec.Name]:
			add(path+".name", "%q is used by an earlier rule", spec.Name)
		}
		names[spec.Name] = true
		if len(spec.Images) == 0 {
			add(path+".images", "must list at least one glob, such as registry.example.com/apps/**")
		}
		for j, pat := range spec.Images {
			g, err := compileGlob(pat)
			if err != nil {
				add(fmt.Sprintf("%s.images[%d]", path, j), "%v", err)
			}
			r.images = append(r.images, g)
		}
		for j, pat := range spec.Namespaces {
			g, err := compileGlob(pat)
			if err != nil || strings.Contains(pat, "/") {
				add(fmt.Sprintf("%s.namespaces[%d]", path, j), "invalid namespace glob %q", pat)
			}
			r.namespaces = append(r.namespaces, g)
		}
		switch spec.Mode {
		case Enforce, Warn:
			if len(spec.Authorities) == 0 {
				add(path+".authorities", "mode %s needs at least one authority", spec.Mode)
			}
		case Skip:
			if len(spec.Authorities)+len(spec.Attestations) > 0 {
				add(path+".mode", "skip verifies nothing: remove authorities and attestations, or use enforce or warn")
			}
		default:
			add(path+".mode", "must be enforce, warn or skip, got %q", spec.Mode)
		}
		anames := map[string]bool{}
		for j, a := range spec.Authorities {
			apath := fmt.Sprintf("%s.authorities[%d]", path, j)
			if a.Name == "" {
				add(apath+".name", "must be set: denials name the authority")
			} else if anames[a.Name] {
				add(apath+".name", "%q is used by an earlier authority of this rule", a.Name)
			}
			anames[a.Name] = true
			auth, material, err := compileAuthority(a, needRoot)
			if err != nil {
				add(apath, "%v", err)
				continue
			}
			h.Write(material)
			r.authorities = append(r.authorities, auth)
		}
		for j, a := range spec.Attestations {
			apath := fmt.Sprintf("%s.attestations[%d]", path, j)
			att := &attestation{name: a.Name, predicateType: a.PredicateType}
			if a.Name == "" {
				add(apath+".name", "must be set: denials name the attestation")
			}
			if a.PredicateType == "" {
				add(apath+".predicateType", "must be set, e.g. https://cosign.sigstore.dev/attestation/vuln/v1")
			}
			if a.Condition != "" {
				ast, iss := env.Compile(a.Condition)
				if iss.Err() != nil {
					add(apath+".condition", "%v", strings.ReplaceAll(iss.Err().Error(), "\n", " "))
				} else if ast.OutputType() != cel.BoolType && ast.OutputType() != cel.DynType {
					add(apath+".condition", "must be a boolean expression, got %s", ast.OutputType())
				} else if prg, err := env.Program(ast, cel.CostLimit(1_000_000)); err != nil {
					add(apath+".condition", "%v", err)
				} else {
					att.program = prg
				}
			}
			r.attestations = append(r.attestations, att)
		}
		r.hash = hex.EncodeToString(h.Sum(nil))
		p.rules = append(p.rules, r)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return p, nil
}

// compileAuthority returns the authority and the key material its cache identity depends on.
func compileAuthority(a AuthoritySpec, trustedRoot func() root.TrustedMaterial) (*authority, []byte, error) {
	set := 0
	for _, b := range []bool{a.Key != nil, a.Keyless != nil, a.Certificate != nil} {
		if b {
			set++
		}
	}
	if set != 1 {
		return nil, nil, errors.New("set exactly one of key, keyless and certificate")
	}
	auth := &authority{name: a.Name, opts: cosign.CheckOpts{IgnoreTlog: a.IgnoreTransparencyLog, Offline: true}}
	var material, caRoots, caIntermediates []byte
	needsRoot := !a.IgnoreTransparencyLog
	switch {
	case a.Key != nil:
		auth.kind = "key"
		pemBytes, err := pemInput(a.Key.File, a.Key.Data)
		if err != nil {
			return nil, nil, fmt.Errorf("key: %w", err)
		}
		pub, err := cryptoutils.UnmarshalPEMToPublicKey(pemBytes)
		if err != nil {
			return nil, nil, fmt.Errorf("key: not a PEM public key (ECDSA, RSA or Ed25519): %w", err)
		}
		v, err := newKeyVerifier(pub)
		if err != nil {
			return nil, nil, fmt.Errorf("key: %w", err)
		}
		auth.opts.SigVerifier = v
		material = pemBytes
	case a.Keyless != nil:
		auth.kind = "keyless"
		if err := checkIdentity(*a.Keyless); err != nil {
			return nil, nil, fmt.Errorf("keyless: %w", err)
		}
		if a.Keyless.Issuer == "" && a.Keyless.IssuerRegExp == "" {
			// As cosign requires: without one, an identity token from any issuer Fulcio trusts
			// would do, and subjects are only unique per issuer.
			return nil, nil, errors.New("keyless: set issuer or issuerRegExp, e.g. issuer: https://token.actions.githubusercontent.com")
		}
		auth.opts.Identities = []cosign.Identity{identity(*a.Keyless)}
		needsRoot = true
	case a.Certificate != nil:
		auth.kind = "certificate"
		c := a.Certificate
		if err := checkIdentity(c.IdentitySpec); err != nil {
			return nil, nil, fmt.Errorf("certificate: %w", err)
		}
		roots, rootPEM, err := certPool(c.Roots)
		if err != nil {
			return nil, nil, fmt.Errorf("certificate.roots: %w", err)
		}
		auth.opts.RootCerts = roots
		caRoots = rootPEM
		material = append(material, rootPEM...)
		if c.Intermediates != "" {
			inter, interPEM, err := certPool(c.Intermediates)
			if err != nil {
				return nil, nil, fmt.Errorf("certificate.intermediates: %w", err)
			}
			auth.opts.IntermediateCerts = inter
			caIntermediates = interPEM
			material = append(material, interPEM...)
		}
		auth.opts.Identities = []cosign.Identity{identity(c.IdentitySpec)}
		// Private CAs do not log their certificates in public CT logs.
		auth.opts.IgnoreSCT = true
	}
	if needsRoot {
		tm := trustedRoot()
		if tm == nil {
			if a.Keyless != nil {
				return nil, nil, errors.New("keyless needs verification.trustedRoot (a sigstore trusted_root.json)")
			}
			return nil, nil, errors.New("transparency-log checks need verification.trustedRoot; or set ignoreTransparencyLog: true for a signer that does not log")
		}
		auth.opts.TrustedMaterial = tm
	}
	if err := auth.compileBundleCheck(caRoots, caIntermediates); err != nil {
		return nil, nil, fmt.Errorf("sigstore bundle verification: %w", err)
	}
	if a.Certificate != nil && auth.opts.TrustedMaterial != nil {
		// cosign checks a .sig certificate against TrustedMaterial's CAs whenever it is set,
		// ignoring RootCerts: there, trust the private CA, and the trusted root for its logs only.
		cas, err := privateCAs(caRoots, caIntermediates)
		if err != nil {
			return nil, nil, fmt.Errorf("certificate: %w", err)
		}
		auth.opts.TrustedMaterial = &privateCA{cas: cas, logs: logsOnly{auth.opts.TrustedMaterial}}
	}
	return auth, material, nil
}

// identity is what cosign and sigstore-go match certificates against. Both match regular
// expressions anywhere in the value; pullgate's must match all of it, so that
// 'https://github\.com/example/.+' does not also admit https://evil.example/https://github.com/example/x.
func identity(s IdentitySpec) cosign.Identity {
	return cosign.Identity{Issuer: s.Issuer, IssuerRegExp: anchor(s.IssuerRegExp), Subject: s.Subject, SubjectRegExp: anchor(s.SubjectRegExp)}
}

func anchor(re string) string {
	if re == "" {
		return ""
	}
	return "^(?:" + re + ")$"
}

func checkIdentity(s IdentitySpec) error {
	if s.Subject == "" && s.SubjectRegExp == "" {
		return errors.New("set subject or subjectRegExp: without one, any identity the CA certifies would do")
	}
	if s.Subject != "" && s.SubjectRegExp != "" {
		return errors.New("set subject or subjectRegExp, not both")
	}
	if s.Issuer != "" && s.IssuerRegExp != "" {
		return errors.New("set issuer or issuerRegExp, not both")
	}
	for _, re := range []string{s.SubjectRegExp, s.IssuerRegExp} {
		if _, err := regexp.Compile(re); err != nil {
			return fmt.Errorf("invalid regular expression %q: %w", re, err)
		}
	}
	return nil
}

func pemInput(file, data string) ([]byte, error) {
	switch {
	case file != "" && data != "":
		return nil, errors.New("set file or data, not both")
	case file != "":
		return readPEMFile(file)
	case data != "":
		return []byte(data), nil
	}
	return nil, errors.New("set file or data")
}

// maxPEMFile bounds a key or certificate file: a policy (one from the cluster too) naming
// /dev/zero or a huge file must not stall or exhaust the node.
const maxPEMFile = 1 << 20

// readPEMFile reads a regular file of at most maxPEMFile bytes.
func readPEMFile(file string) ([]byte, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", file)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxPEMFile+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxPEMFile {
		return nil, fmt.Errorf("%s is larger than %d bytes; a PEM key or certificate bundle is far smaller", file, maxPEMFile)
	}
	return b, nil
}

func certPool(file string) (*x509.CertPool, []byte, error) {
	if file == "" {
		return nil, nil, errors.New("must name a PEM file")
	}
	b, err := readPEMFile(file)
	if err != nil {
		return nil, nil, err
	}
	certs, err := cryptoutils.UnmarshalCertificatesFromPEM(b)
	if err != nil || len(certs) == 0 {
		return nil, nil, fmt.Errorf("no PEM certificate in %s", file)
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool, b, nil
}

// match returns the first rule for the image and namespace, or nil.
func (p *Policy) match(img Image, namespace string) *rule {
	name := hostKey(img.Registry) + "/" + img.Repository
	for _, r := range p.rules {
		if !matchAny(r.images, name) {
			continue
		}
		if len(r.namespaces) > 0 && (namespace == "" || !matchAny(r.namespaces, namespace)) {
			continue
		}
		return r
	}
	return nil
}

func matchAny(gs []glob, s string) bool {
	for _, g := range gs {
		if g.match(s) {
			return true
		}
	}
	return false
}

// hostKey spells a registry host the one way rules are matched against: hosts are
// case-insensitive, and port 443 is the default one, so REGISTRY.example.com:443 is
// registry.example.com, as far as the server it reaches is concerned.
func hostKey(host string) string {
	return strings.TrimSuffix(strings.ToLower(host), ":443")
}
