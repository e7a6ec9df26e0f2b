// Package cluster takes policy from the cluster's API: NodeImagePolicy objects, watched with the
// node's own identity, merged after the node's file into the policy the node enforces.
package cluster

import (
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/pullgate/pullgate/verify"
)

// Group, Version and Resource name the CRD nodeimagepolicies.pullgate.io.
var Resource = schema.GroupVersionResource{Group: "pullgate.io", Version: "v1alpha1", Resource: "nodeimagepolicies"}

// Kind is the objects' kind.
const Kind = "NodeImagePolicy"

// NodeImagePolicy is one cluster-scoped policy object.
type NodeImagePolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              Spec `json:"spec"`
}

// Spec is what an object asks of the nodes it selects.
type Spec struct {
	// Rules are the config file's policies, unchanged.
	Rules []verify.RuleSpec `json:"rules"`
	// Order places the object's rules among the others: lower first, ties by name.
	Order int `json:"order,omitempty"`
	// NodeSelector selects the Nodes, by their labels, whose pullgate applies the object;
	// absent, every node does.
	NodeSelector *metav1.LabelSelector `json:"nodeSelector,omitempty"`
	// DefaultAction, when set, votes for the action on images no rule matches; deny wins.
	DefaultAction verify.Action `json:"defaultAction,omitempty"`
}

// Applied is one object as a node applies it: what of it was accepted.
type Applied struct {
	Name string `json:"name"`
	// UID tells an object deleted and made again under the same name, generation 1 again.
	UID        string `json:"uid,omitempty"`
	Generation int64  `json:"generation"`
	Spec       Spec   `json:"spec"`
}

// ruleName is how an object's rule is named among the node's rules, in logs and metrics: the
// file's rule names and other objects' stay apart.
func ruleName(object, rule string) string { return fmt.Sprintf("%s/%s", object, rule) }
