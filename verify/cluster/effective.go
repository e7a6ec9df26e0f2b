package cluster

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/pullgate/pullgate/verify"
)

// Effective is the policy a node enforces: the file's rules first (what the node needs to boot:
// pause, CNI, the installer), then each applied object's by order and name; an image no rule
// matches gets the strictest default action among the file's and the objects' (deny wins).
func Effective(file []verify.RuleSpec, fileDefault verify.Action, applied []Applied) ([]verify.RuleSpec, verify.Action) {
	objects := slices.Clone(applied)
	slices.SortFunc(objects, func(a, b Applied) int {
		return cmp.Or(cmp.Compare(a.Spec.Order, b.Spec.Order), strings.Compare(a.Name, b.Name))
	})
	rules := slices.Clone(file)
	action := fileDefault
	for _, o := range objects {
		rules = append(rules, o.rules()...)
		if o.Spec.DefaultAction == verify.Deny {
			action = verify.Deny
		}
	}
	return rules, action
}

// rules are the object's rules, named apart from every other object's and the file's.
func (a Applied) rules() []verify.RuleSpec {
	out := make([]verify.RuleSpec, len(a.Spec.Rules))
	for i, r := range a.Spec.Rules {
		r.Name = ruleName(a.Name, r.Name)
		out[i] = r
	}
	return out
}

// Check is the validation only a node can do, of one object alone: its keys parse, its
// globs, regular expressions and CEL conditions compile, its selector and default action are
// well formed. An object that fails it is refused whole.
func Check(p *NodeImagePolicy, s verify.Settings) error {
	var errs []error
	if len(p.Spec.Rules) == 0 {
		errs = append(errs, errors.New("spec.rules: must have at least one rule"))
	}
	if p.Spec.NodeSelector != nil {
		if _, err := metav1.LabelSelectorAsSelector(p.Spec.NodeSelector); err != nil {
			errs = append(errs, fmt.Errorf("spec.nodeSelector: %w", err))
		}
	}
	switch p.Spec.DefaultAction {
	case "", verify.Deny, verify.Allow:
	default:
		errs = append(errs, fmt.Errorf("spec.defaultAction: must be deny or allow, got %q", p.Spec.DefaultAction))
	}
	if len(p.Spec.Rules) > 0 {
		if _, err := verify.CompilePolicy(p.Spec.Rules, verify.Deny, s); err != nil {
			errs = append(errs, rulesPath(err))
		}
	}
	return errors.Join(errs...)
}

// rulesPath says spec.rules where the compiler, which reads the config file, says policies.
func rulesPath(err error) error {
	var out []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			out = append(out, rulesPath(e))
		}
		return errors.Join(out...)
	}
	msg, ok := strings.CutPrefix(err.Error(), "policies[")
	if !ok {
		return err
	}
	return errors.New("spec.rules[" + msg)
}

// Selects reports whether the object applies to a node with these labels.
func Selects(p *NodeImagePolicy, node labels.Set) bool {
	if p.Spec.NodeSelector == nil {
		return true
	}
	sel, err := metav1.LabelSelectorAsSelector(p.Spec.NodeSelector)
	return err == nil && sel.Matches(node)
}
