package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/pullgate/pullgate/proxy/config"
	"github.com/pullgate/pullgate/verify"
	"github.com/pullgate/pullgate/verify/cluster"
)

// policy compiles what the node enforces under cfg: the file's rules, then, with cluster set,
// the NodeImagePolicy objects in effect. Call with d.mu held.
func (d *daemon) policy(cfg config.Config) (*verify.Policy, error) {
	if cfg.Cluster == nil {
		return cfg.Policy()
	}
	rules, action := cluster.Effective(cfg.Policies, verify.Action(cfg.DefaultAction), d.applied)
	return verify.CompilePolicy(rules, action, cfg.Settings())
}

// loadApplied reads the objects the node applied last, to enforce from start until the API
// server answers (kubelet pulls static control-plane pods before there is one).
func (d *daemon) loadApplied(cfg config.Config) {
	if cfg.Cluster == nil {
		return
	}
	applied, err := cluster.Load(cfg.StateDir)
	if err != nil {
		d.logger.Error("cluster policy: what the node applied last cannot be read; enforcing the file's rules until the API server answers", "error", err)
		return
	}
	d.applied = applied
	if _, err := d.policy(cfg); err != nil {
		d.logger.Error("cluster policy: what the node applied last no longer compiles; enforcing the file's rules until the API server answers", "error", err)
		d.applied = nil
		return
	}
	if len(applied) > 0 {
		d.logger.Info("cluster policy: enforcing what the node applied last until the API server answers", "objects", len(applied))
	}
}

// applyCluster puts the objects in effect, if the policy they make with the file compiles.
func (d *daemon) applyCluster(applied []cluster.Applied) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	prev := d.applied
	d.applied = applied
	policy, err := d.policy(d.current)
	if err != nil {
		d.applied = prev
		return err
	}
	d.verifier.SetPolicy(policy)
	d.proxy.PolicyChanged()
	if err := cluster.Save(d.current.StateDir, applied); err != nil {
		d.logger.Error("cluster policy: applied, but not saved for the next start", "error", err)
	}
	return nil
}

func (d *daemon) checkObject(p *cluster.NodeImagePolicy) error {
	d.mu.Lock()
	s := d.current.Settings()
	d.mu.Unlock()
	return cluster.Check(p, s)
}

// watchCluster follows the cluster's NodeImagePolicies until ctx ends. kubelet's kubeconfig
// may not exist yet (its TLS bootstrap comes later on a new node): it is looked for again.
func (d *daemon) watchCluster(ctx context.Context, c config.Cluster, reg prometheus.Registerer) {
	node, err := nodeName(c)
	if err != nil {
		d.logger.Error("cluster policy: not watched", "error", err)
		return
	}
	for {
		dyn, core, err := clients(c.Kubeconfig)
		if err == nil {
			d.mu.Lock()
			start := d.applied
			d.mu.Unlock()
			events := cluster.NewNodeEvents(core, node)
			defer events.Stop()
			d.proxy.SetNodeWarnings(events.Warning)
			if d.state == nil {
				events.Warning(cluster.ReasonStateUnusable, "pullgate's stateDir cannot be used: decisions are kept in memory only, and images on the node count as never verified after a restart; see pullgate's log")
			}
			w := cluster.NewWatcher(dyn, core, node, start, d.checkObject, d.applyCluster,
				cluster.WithLogger(d.logger), cluster.WithMetrics(reg), cluster.WithWarnings(events.Warning))
			d.logger.Info("cluster policy: watching NodeImagePolicies", "node", node, "kubeconfig", c.Kubeconfig)
			w.Run(ctx)
			return
		}
		d.logger.Warn("cluster policy: kubeconfig not usable yet; trying again in 10s", "kubeconfig", c.Kubeconfig, "error", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(10 * time.Second):
		}
	}
}

func nodeName(c config.Cluster) (string, error) {
	if c.NodeName != "" {
		return c.NodeName, nil
	}
	h, err := os.Hostname()
	if err != nil {
		return "", fmt.Errorf("cluster.nodeName is not set and the host name is unknown: %w", err)
	}
	return strings.ToLower(h), nil
}

func clients(kubeconfig string) (dynamic.Interface, kubernetes.Interface, error) {
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, nil, err
	}
	rc.UserAgent = "pullgate/" + versionString()
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, nil, err
	}
	core, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, nil, err
	}
	return dyn, core, nil
}
