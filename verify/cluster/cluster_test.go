package cluster

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/pullgate/pullgate/verify"
)

func keyPEM(t *testing.T) string {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

func rule(name, image string) verify.RuleSpec {
	return verify.RuleSpec{Name: name, Images: []string{image}, Mode: verify.Skip}
}

func TestEffective(t *testing.T) {
	t.Parallel()
	file := []verify.RuleSpec{rule("pause", "registry.k8s.io/pause")}
	applied := []Applied{
		{Name: "zeta", Spec: Spec{Order: 10, Rules: []verify.RuleSpec{rule("apps", "example.com/apps/**")}}},
		{Name: "alpha", Spec: Spec{Order: 10, Rules: []verify.RuleSpec{rule("apps", "example.com/apps/**")}, DefaultAction: verify.Allow}},
		{Name: "first", Spec: Spec{Order: -5, Rules: []verify.RuleSpec{rule("base", "docker.io/library/*"), rule("more", "quay.io/**")}}},
	}
	tests := []struct {
		name        string
		fileDefault verify.Action
		applied     []Applied
		wantRules   []string
		wantAction  verify.Action
	}{
		{name: "file only", fileDefault: verify.Allow, wantRules: []string{"pause"}, wantAction: verify.Allow},
		{name: "file first, then order, then name", fileDefault: verify.Allow, applied: applied,
			wantRules: []string{"pause", "first/base", "first/more", "alpha/apps", "zeta/apps"}, wantAction: verify.Allow},
		{name: "an object's deny wins over the file's allow", fileDefault: verify.Allow,
			applied:   append(applied[:1:1], Applied{Name: "strict", Spec: Spec{Rules: []verify.RuleSpec{rule("x", "x.io/**")}, DefaultAction: verify.Deny}}),
			wantRules: []string{"pause", "strict/x", "zeta/apps"}, wantAction: verify.Deny},
		{name: "an object's allow does not loosen the file's deny", fileDefault: verify.Deny, applied: applied[1:2],
			wantRules: []string{"pause", "alpha/apps"}, wantAction: verify.Deny},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rules, action := Effective(file, tc.fileDefault, tc.applied)
			var names []string
			for _, r := range rules {
				names = append(names, r.Name)
			}
			if !reflect.DeepEqual(names, tc.wantRules) || action != tc.wantAction {
				t.Errorf("Effective = %v, %s; want %v, %s", names, action, tc.wantRules, tc.wantAction)
			}
			if _, err := verify.CompilePolicy(rules, action, verify.Settings{}); err != nil {
				t.Errorf("the effective rules do not compile: %v", err)
			}
		})
	}
}

func TestCheck(t *testing.T) {
	t.Parallel()
	key := keyPEM(t)
	good := verify.RuleSpec{Name: "apps", Images: []string{"example.com/**"}, Mode: verify.Enforce,
		Authorities: []verify.AuthoritySpec{{Name: "release", Key: &verify.KeySpec{Data: key}, IgnoreTransparencyLog: true}}}
	badKey := good
	badKey.Authorities = []verify.AuthoritySpec{{Name: "release", Key: &verify.KeySpec{Data: "not a key"}}}
	badCEL := good
	badCEL.Attestations = []verify.AttestationSpec{{Name: "scan", PredicateType: "https://example.com/scan", Condition: "predicate.("}}
	tests := []struct {
		name string
		spec Spec
		want string // in the error; empty for none
	}{
		{name: "good", spec: Spec{Rules: []verify.RuleSpec{good}, NodeSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"pool": "gpu"}}}},
		{name: "no rules", spec: Spec{}, want: "spec.rules: must have at least one rule"},
		{name: "a key that does not parse", spec: Spec{Rules: []verify.RuleSpec{good, badKey}}, want: "spec.rules[1].authorities[0]"},
		{name: "a CEL condition that does not compile", spec: Spec{Rules: []verify.RuleSpec{badCEL}}, want: "spec.rules[0].attestations[0]"},
		{name: "a bad selector", spec: Spec{Rules: []verify.RuleSpec{good}, NodeSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "pool", Operator: "Near"}}}},
			want: "spec.nodeSelector"},
		{name: "a bad default action", spec: Spec{Rules: []verify.RuleSpec{good}, DefaultAction: "maybe"}, want: "spec.defaultAction: must be deny or allow"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := Check(&NodeImagePolicy{Spec: tc.spec}, verify.Settings{Timeout: time.Second, MaxSignatures: 1, MaxBytes: 1})
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("Check = %v, want it accepted", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("Check = %v, want an error with %q", err, tc.want)
			}
		})
	}
}

func TestSaveLoad(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if got, err := Load(dir); err != nil || got != nil {
		t.Fatalf("Load of nothing saved = %v, %v", got, err)
	}
	want := []Applied{{Name: "a", Generation: 3, Spec: Spec{Order: 2, Rules: []verify.RuleSpec{rule("r", "x.io/**")}, DefaultAction: verify.Deny}}}
	if err := Save(dir, want); err != nil {
		t.Fatal(err)
	}
	if got, err := Load(dir); err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("Load = %+v, %v; want %+v", got, err, want)
	}
}

// object is a NodeImagePolicy as the API server serves it.
func object(t *testing.T, name string, gen int64, spec Spec) *unstructured.Unstructured {
	t.Helper()
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&NodeImagePolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: Resource.GroupVersion().String(), Kind: Kind},
		ObjectMeta: metav1.ObjectMeta{Name: name, Generation: gen},
		Spec:       spec,
	})
	if err != nil {
		t.Fatal(err)
	}
	return &unstructured.Unstructured{Object: m}
}

// The watcher applies the objects that select the node, each as checked; a refused version
// leaves the one before in effect; a deleted or deselected object leaves; nothing is applied
// before the first complete list.
func TestWatcher(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	bad := errors.New("key does not parse")
	check := func(p *NodeImagePolicy) error {
		if p.Spec.Order == 666 {
			return bad
		}
		return nil
	}
	gpu := Spec{Rules: []verify.RuleSpec{rule("gpu", "x.io/gpu/**")}, NodeSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"pool": "gpu"}}}
	apps := Spec{Rules: []verify.RuleSpec{rule("apps", "x.io/apps/**")}}
	scheme := runtime.NewScheme()
	dyn := dynfake.NewSimpleDynamicClientWithCustomListKinds(scheme, map[schema.GroupVersionResource]string{Resource: "NodeImagePolicyList"},
		object(t, "apps", 2, apps), object(t, "gpu", 1, gpu), object(t, "broken", 1, Spec{Order: 666}))
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1", Labels: map[string]string{"pool": "cpu"}}}
	core := fake.NewClientset(node)

	applied := make(chan []string, 10)
	warned := make(chan string, 10)
	start := []Applied{{Name: "apps", Generation: 1, Spec: apps}}
	w := NewWatcher(dyn, core, "node-1", start, check, func(a []Applied) error {
		applied <- strings.Fields(fmt.Sprint(describe(a)))
		return nil
	}, WithLogger(slog.New(slog.DiscardHandler)), WithWarnings(func(reason, message string) { warned <- reason + ": " + message }))
	go w.Run(ctx)
	next := func(want string) {
		t.Helper()
		select {
		case got := <-applied:
			if strings.Join(got, " ") != want {
				t.Fatalf("applied %v, want %s", got, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("nothing applied within 10s, want %s", want)
		}
	}
	next("[apps@2]") // gpu does not select this node; broken is refused and had no version before
	if got := <-warned; !strings.HasPrefix(got, ReasonPolicyRefused+": NodeImagePolicy broken generation 1 refused") || !strings.Contains(got, bad.Error()) {
		t.Errorf("warning %q, want the refusal of broken with its reason", got)
	}

	update := func(u *unstructured.Unstructured) {
		t.Helper()
		if _, err := dyn.Resource(Resource).Update(ctx, u, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	update(object(t, "apps", 3, Spec{Order: 666, Rules: apps.Rules})) // refused: apps@2 stays
	update(object(t, "broken", 2, apps))                              // fixed
	next("[apps@2 broken@2]")

	node.Labels["pool"] = "gpu"
	if _, err := core.CoreV1().Nodes().Update(ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	next("[apps@2 broken@2 gpu@1]")

	// A selector that does not parse is a refusal: the version before stays, and is warned of.
	badSelector := gpu
	badSelector.NodeSelector = &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "pool", Operator: metav1.LabelSelectorOpIn}}}
	update(object(t, "gpu", 2, badSelector))
	for got := ""; !strings.Contains(got, "NodeImagePolicy gpu generation 2 refused"); {
		select {
		case got = <-warned:
			if strings.Contains(got, "gpu") && !strings.Contains(got, "spec.nodeSelector") {
				t.Errorf("warning %q, want gpu's selector named", got)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a selector that does not parse was not refused")
		}
	}

	if err := dyn.Resource(Resource).Delete(ctx, "apps", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	next("[broken@2 gpu@1]")
}
