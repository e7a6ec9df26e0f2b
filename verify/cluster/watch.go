package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// Watcher follows the NodeImagePolicies and the node's own Node object with client-go
// informers, and hands the objects that apply to the node, each checked, to apply. It never
// blocks serving: until the API server answers, the node enforces what it applied last.
type Watcher struct {
	dyn    dynamic.Interface
	core   kubernetes.Interface
	node   string
	check  func(*NodeImagePolicy) error
	apply  func([]Applied) error
	logger *slog.Logger

	mu sync.Mutex
	// applied are the objects in effect, by name; refused the generation and reason of each
	// object whose latest version was refused.
	applied map[string]Applied
	refused map[string]refusal
	contact time.Time
	// lastApply is when apply last took a change.
	lastApply time.Time

	// warn records what an admin must see without the node's logs (Events on the Node).
	warn func(reason, message string)
	// unreachable is set once the API server was away too long and that was said.
	unreachable bool

	generation *prometheus.GaugeVec
	refusedM   *prometheus.GaugeVec
	changed    chan struct{}
}

type refusal struct {
	generation int64
	reason     string
}

// WatcherOption configures a Watcher.
type WatcherOption func(*Watcher)

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) WatcherOption { return func(w *Watcher) { w.logger = l } }

// WithWarnings has warn record what an admin must see on the Node: a refused object, an API
// server away for long.
func WithWarnings(warn func(reason, message string)) WatcherOption {
	return func(w *Watcher) { w.warn = warn }
}

// unreachableAfter is how long without the API server is worth an Event.
const unreachableAfter = 5 * time.Minute

// WithMetrics registers the watcher's metrics with reg.
func WithMetrics(reg prometheus.Registerer) WatcherOption {
	return func(w *Watcher) {
		w.generation = prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pullgate_cluster_policy_generation",
			Help: "metadata.generation of each NodeImagePolicy this node applies.",
		}, []string{"object"})
		w.refusedM = prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pullgate_cluster_policy_refused",
			Help: "1 for each NodeImagePolicy whose latest version this node refused (it keeps the version before, if any).",
		}, []string{"object"})
		reg.MustRegister(w.generation, w.refusedM,
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "pullgate_cluster_policy_last_apply_timestamp_seconds",
				Help: "When the cluster's policy last changed what this node enforces (Unix time; 0 never).",
			}, w.lastApplySeconds),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "pullgate_cluster_api_contact_age_seconds",
				Help: "Seconds since the API server last answered this node's pullgate (+Inf never).",
			}, w.contactAge))
	}
}

// lastApplySeconds is when a change was last applied, in Unix seconds; 0 never.
func (w *Watcher) lastApplySeconds() float64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.lastApply.IsZero() {
		return 0
	}
	return float64(w.lastApply.UnixNano()) / 1e9
}

// contactAge is how long since the API server last answered; +Inf never.
func (w *Watcher) contactAge() float64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.contact.IsZero() {
		return math.Inf(1)
	}
	return time.Since(w.contact).Seconds()
}

// NewWatcher watches with the clients given (the node's identity). start are the objects the
// node applied last; apply is called with every change of the objects in effect and must
// return an error, leaving the previous ones in effect, when it cannot apply them.
func NewWatcher(dyn dynamic.Interface, core kubernetes.Interface, node string, start []Applied,
	check func(*NodeImagePolicy) error, apply func([]Applied) error, opts ...WatcherOption) *Watcher {
	w := &Watcher{dyn: dyn, core: core, node: node, check: check, apply: apply, logger: slog.Default(), warn: func(string, string) {},
		applied: map[string]Applied{}, refused: map[string]refusal{}, changed: make(chan struct{}, 1)}
	for _, a := range start {
		w.applied[a.Name] = a
	}
	for _, o := range opts {
		o(w)
	}
	w.record()
	return w
}

// Run watches until ctx ends.
func (w *Watcher) Run(ctx context.Context) {
	policies := dynamicinformer.NewDynamicSharedInformerFactory(w.dyn, 0)
	pi := policies.ForResource(Resource).Informer()
	nodes := informers.NewSharedInformerFactoryWithOptions(w.core, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("metadata.name", w.node).String()
	}))
	ni := nodes.Core().V1().Nodes().Informer()
	poke := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { w.poke() },
		UpdateFunc: func(any, any) { w.poke() },
		DeleteFunc: func(any) { w.poke() },
	}
	if _, err := pi.AddEventHandler(poke); err != nil {
		w.logger.Error("cluster policy: cannot watch NodeImagePolicies", "error", err)
		return
	}
	if _, err := ni.AddEventHandler(poke); err != nil {
		w.logger.Error("cluster policy: cannot watch the node", "error", err)
		return
	}
	for _, inf := range []cache.SharedIndexInformer{pi, ni} {
		_ = inf.SetWatchErrorHandler(func(_ *cache.Reflector, err error) {
			w.logger.Warn("cluster policy: watch interrupted; the node keeps enforcing what it applied", "error", err)
		})
	}
	policies.Start(ctx.Done())
	nodes.Start(ctx.Done())
	go w.keepContact(ctx)
	go func() {
		// The first complete lists settle what is in effect, even when no object comes with
		// them to poke the loop (none left in the cluster).
		if cache.WaitForCacheSync(ctx.Done(), pi.HasSynced, ni.HasSynced) {
			w.poke()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			policies.Shutdown()
			nodes.Shutdown()
			return
		case <-w.changed:
		}
		if !pi.HasSynced() || !ni.HasSynced() {
			continue // a change before the first complete list says nothing of the rest
		}
		w.touch()
		node, ok, _ := ni.GetStore().GetByKey(w.node)
		if !ok {
			w.logger.Warn("cluster policy: this node's Node object is not there; keeping what the node applied", "node", w.node)
			continue
		}
		w.reconcile(pi.GetStore().List(), labels.Set(node.(*corev1.Node).Labels))
	}
}

func (w *Watcher) poke() {
	select {
	case w.changed <- struct{}{}:
	default:
	}
}

func (w *Watcher) touch() {
	w.mu.Lock()
	w.contact = time.Now()
	w.mu.Unlock()
}

// keepContact asks the API server for the node now and then, so that the contact metric tells
// an idle watch from a dead API server. Once a minute, from the API server's watch cache
// (resourceVersion 0), not etcd: 5,000 nodes make 83 such requests a second.
func (w *Watcher) keepContact(ctx context.Context) {
	tick := time.NewTicker(time.Minute)
	defer tick.Stop()
	for {
		c, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := w.core.CoreV1().Nodes().Get(c, w.node, metav1.GetOptions{ResourceVersion: "0"})
		cancel()
		if err == nil {
			w.touch()
		}
		w.mu.Lock()
		away := !w.contact.IsZero() && time.Since(w.contact) > unreachableAfter
		say := away && !w.unreachable
		w.unreachable = away
		last := w.contact
		w.mu.Unlock()
		if say {
			// Recorded once it answers again: the broadcaster retries.
			w.warn(ReasonAPIUnreachable, fmt.Sprintf("pullgate could not reach the API server since %s; the node enforces the NodeImagePolicies it applied before", last.UTC().Format(time.RFC3339)))
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// reconcile works out the objects in effect from the cluster's, for a node with these labels.
func (w *Watcher) reconcile(objects []any, node labels.Set) {
	w.mu.Lock()
	next := map[string]Applied{}
	for _, o := range objects {
		u, ok := o.(*unstructured.Unstructured)
		if !ok {
			continue
		}
		var p NodeImagePolicy
		err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &p)
		name, gen, uid := u.GetName(), u.GetGeneration(), string(u.GetUID())
		if err == nil && p.Spec.NodeSelector != nil {
			// A selector that does not parse is a refusal, never "not for this node": that
			// would drop the object everywhere without a word.
			if _, serr := metav1.LabelSelectorAsSelector(p.Spec.NodeSelector); serr != nil {
				err = fmt.Errorf("spec.nodeSelector: %w", serr)
			}
		}
		if err == nil && !Selects(&p, node) {
			continue
		}
		if prev, ok := w.applied[name]; ok && prev.Generation == gen && prev.UID == uid {
			next[name] = prev
			continue
		}
		if err == nil {
			err = w.check(&p)
		}
		if err != nil {
			if r, seen := w.refused[name]; !seen || r.generation != gen {
				w.logger.Error("cluster policy: NodeImagePolicy refused; the node keeps its version before", "object", name, "generation", gen, "error", err)
				w.warn(ReasonPolicyRefused, fmt.Sprintf("NodeImagePolicy %s generation %d refused; the node keeps its version before: %v", name, gen, err))
			}
			w.refused[name] = refusal{gen, err.Error()}
			if prev, ok := w.applied[name]; ok {
				next[name] = prev
			}
			continue
		}
		delete(w.refused, name)
		next[name] = Applied{Name: name, UID: uid, Generation: gen, Spec: p.Spec}
	}
	for name := range w.refused {
		if !slices.ContainsFunc(objects, func(o any) bool { u, ok := o.(*unstructured.Unstructured); return ok && u.GetName() == name }) {
			delete(w.refused, name)
		}
	}
	same := reflect.DeepEqual(next, w.applied)
	w.mu.Unlock()
	if !same {
		list := slices.SortedFunc(maps.Values(next), func(a, b Applied) int { return strings.Compare(a.Name, b.Name) })
		if err := w.apply(list); err != nil {
			w.logger.Error("cluster policy: the objects could not be applied together; the node keeps what it applied", "error", err)
			w.record()
			return
		}
		w.mu.Lock()
		w.applied, w.lastApply = next, time.Now()
		w.mu.Unlock()
		w.logger.Info("cluster policy applied", "objects", describe(list))
	}
	w.record()
}

func describe(list []Applied) []string {
	out := make([]string, len(list))
	for i, a := range list {
		out[i] = fmt.Sprintf("%s@%d", a.Name, a.Generation)
	}
	return out
}

// record sets the metrics from what is in effect.
func (w *Watcher) record() {
	if w.generation == nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.generation.Reset()
	for name, a := range w.applied {
		w.generation.WithLabelValues(name).Set(float64(a.Generation))
	}
	w.refusedM.Reset()
	for name := range w.refused {
		w.refusedM.WithLabelValues(name).Set(1)
	}
}
