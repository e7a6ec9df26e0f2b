package verify

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/opencontainers/go-digest"

	"github.com/pullgate/pullgate/verify/state"
)

// Known decides on an image already in the runtime's store from what the node knows, without
// asking the registry: the decision stored for the digest under the current rule, or else the
// current rule checked again on the registry answers stored when the digest was last verified.
// With neither, an enforced rule does not allow the image and the decision is marked Unknown:
// it was never verified on this node (imported into the store, pulled before pullgate ran, or
// pulled for a namespace with a laxer rule).
//
// With req.AllNamespaces the decision must hold in every namespace, and the strictest rule that
// could apply decides: ImageStatus, for one, names no namespace.
func (v *Verifier) Known(ctx context.Context, req Request) (Decision, error) {
	p := v.policy.Load()
	if !req.AllNamespaces {
		return v.knownRule(ctx, p, p.match(req.Image, req.Namespace), req)
	}
	rules, orDefault := p.candidates(req.Image)
	var first Decision
	for i, r := range rules {
		d, err := v.knownRule(ctx, p, r, req)
		if err != nil || !d.Allowed {
			return d, err
		}
		if i == 0 {
			first = d
		}
	}
	if orDefault {
		if d := p.unmatched(req.Image); !d.Allowed || len(rules) == 0 {
			return d, nil
		}
	}
	return first, nil
}

func (v *Verifier) knownRule(ctx context.Context, p *Policy, r *rule, req Request) (Decision, error) {
	switch {
	case r == nil:
		return p.unmatched(req.Image), nil
	case r.mode == Skip:
		return Decision{Allowed: true, Rule: r.name, Mode: Skip}, nil
	}
	return v.known(ctx, p, r, req.Image, req.Digest)
}

// known decides the digest of img under r from the node's memory and state.
func (v *Verifier) known(ctx context.Context, p *Policy, r *rule, img Image, dg digest.Digest) (Decision, error) {
	unknown := Decision{Rule: r.name, Mode: r.mode, Unknown: true, Allowed: r.mode == Warn}
	if dg == "" {
		unknown.Reason = fmt.Sprintf("%s has no registry digest in the runtime's store (it was imported, not pulled), so it was never verified; pull it through pullgate", img)
		return unknown, nil
	}
	unknown.Reason = fmt.Sprintf("%s@%s was never verified on this node under this rule; pull it through pullgate", img.Name(), dg)
	key := cacheKey{img.Name(), dg.String(), r.hash}
	if d, ok := v.cached(key); ok {
		return d, nil
	}
	if v.state == nil {
		return unknown, nil
	}
	if sd, ok := v.state.Decision(key.image, key.digest, r.hash); ok {
		d := Decision{Allowed: sd.Verified || r.mode == Warn, Rule: r.name, Mode: r.mode, Reason: sd.Reason, Stored: true}
		return d, nil
	}
	if d, ok := v.rechecked.get(key, v.now()); ok {
		return d, nil
	}
	d, _, err := v.offline.Do(ctx, key, func(ctx context.Context) (Decision, error) {
		ev, err := v.state.Evidence(key.image, key.digest)
		if err != nil || ev == nil {
			return unknown, err
		}
		ctx, cancel := context.WithTimeout(ctx, p.settings.Timeout)
		defer cancel()
		d, _, err := v.check(ctx, p.settings, r, Request{Image: img, Digest: dg}, replay{ev})
		if err != nil {
			d = unknown
			d.Reason = fmt.Sprintf("%s@%s was verified under another version of rule %q, and the evidence stored then does not settle this one (%v); pull it through pullgate", img.Name(), dg, r.name, oneLine(err))
			// Not for long: a pull may store new evidence meanwhile.
			v.rechecked.put(key, d, v.now(), failureTTL)
			return d, nil
		}
		d.Stored = true
		v.persist(r, img, dg, d, nil)
		// Also in memory, in case the state could not store it: the same evidence gives
		// the same answer under the same rule.
		v.rechecked.put(key, d, v.now(), p.settings.CacheTTL)
		return d, nil
	})
	return d, err
}

// persist stores d, and the evidence it was made on when ev is not nil. A failure to store is
// logged, not returned: the decision stands, and the image is verified again when next used.
func (v *Verifier) persist(r *rule, img Image, dg digest.Digest, d Decision, ev *state.Evidence) {
	if v.state == nil || v.state.ReadOnly() {
		return
	}
	sd := state.Decision{RuleHash: r.hash, Rule: r.name, Mode: string(r.mode), Verified: d.verified(), Reason: d.Reason, At: v.now().UTC()}
	if ev != nil {
		ev.At = sd.At
	}
	if err := v.state.Put(img.Name(), dg.String(), sd, ev); err != nil {
		v.logger.Error("verification decision not stored; the image is verified again when next used", "image", img.Name(), "digest", dg, "error", err)
	}
}

// unmatched is the decision for an image that no rule matches.
func (p *Policy) unmatched(img Image) Decision {
	if p.defaultAction == Allow {
		return Decision{Allowed: true, Rule: DefaultRule}
	}
	return Decision{Rule: DefaultRule, Reason: "no policy matches (defaultAction: deny); add a policy for it or set defaultAction: allow"}
}

// candidates are the rules that decide img in some namespace, in order; orDefault is set when
// in some namespace none of them matches.
func (p *Policy) candidates(img Image) (rules []*rule, orDefault bool) {
	name := hostKey(img.Registry) + "/" + img.Repository
	for _, r := range p.rules {
		if !matchAny(r.images, name) {
			continue
		}
		rules = append(rules, r)
		if len(r.namespaces) == 0 || slices.ContainsFunc(r.namespaces, glob.all) {
			return rules, false
		}
	}
	return rules, true
}

// unavailableErr tells a registry that could not be reached from one that answered.
func unavailableErr(err error) bool {
	var re *RegistryError
	if errors.As(err, &re) {
		return re.Unavailable
	}
	return unavailable(err)
}
