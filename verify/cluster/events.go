package cluster

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"
)

// Reasons of the Events pullgate records on its Node.
const (
	ReasonPolicyRefused    = "NodeImagePolicyRefused"
	ReasonContainerRefused = "ContainerRefused"
	ReasonAPIUnreachable   = "APIServerUnreachable"
	ReasonStateUnusable    = "StateUnusable"
	eventComponent         = "pullgate"
	nodeEventsNamespace    = "default" // where kubelet records its Node's events too
	maxEventMessageRunes   = 1024
)

// NodeEvents records Events on the node's Node object, as kubelet does for its own, through
// client-go's broadcaster: correlated and rate limited, retried while the API server is away.
type NodeEvents struct {
	broadcaster record.EventBroadcaster
	recorder    record.EventRecorder
	node        *corev1.ObjectReference
}

// NewNodeEvents records with core, the node's identity (the Node authorizer lets a node
// create events).
func NewNodeEvents(core kubernetes.Interface, node string) *NodeEvents {
	b := record.NewBroadcaster()
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: core.CoreV1().Events(nodeEventsNamespace)})
	return &NodeEvents{
		broadcaster: b,
		recorder:    b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: eventComponent, Host: node}),
		// kubelet names its Node by name and UID alike in the events it records.
		node: &corev1.ObjectReference{Kind: "Node", Name: node, UID: types.UID(node)},
	}
}

// Warning records a warning Event with reason on the Node.
func (e *NodeEvents) Warning(reason, message string) {
	message = truncate(message, maxEventMessageRunes)
	e.recorder.Event(e.node, corev1.EventTypeWarning, reason, message)
}

// Stop flushes nothing more and ends the broadcaster.
func (e *NodeEvents) Stop() { e.broadcaster.Shutdown() }
