package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/pullgate/pullgate/proxy"
	"github.com/pullgate/pullgate/proxy/config"
	"github.com/pullgate/pullgate/verify"
	"github.com/pullgate/pullgate/verify/cluster"
)

// policy compiles what the node enforces under cfg: the file's rules, then the NodeImagePolicy
// objects in effect (none without cluster). Call with d.mu held.
func (d *daemon) policy(cfg config.Config) (*verify.Policy, error) {
	rules, action := cluster.Effective(cfg.Policies, verify.Action(cfg.DefaultAction), d.applied)
	return verify.CompilePolicy(rules, action, cfg.Settings())
}

// setPolicy puts policy in effect for the next pull and for images already on the node.
func (d *daemon) setPolicy(policy *verify.Policy) {
	d.verifier.SetPolicy(policy)
	d.proxy.PolicyChanged()
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
	d.setPolicy(policy)
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
		dyn, core, err := cluster.Clients(c.Kubeconfig, "pullgate/"+versionString())
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
			go d.keepReport(ctx, cluster.NewReporter(dyn, core, node, d.logger))
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

// reportInterval is how often the node's report is brought up to date: at most one write per
// interval, whatever the churn of images and policies, and none when nothing changed.
const reportInterval = 10 * time.Second

// keepReport keeps the node's ClusterReport what `pullgate audit` would print, until ctx ends.
func (d *daemon) keepReport(ctx context.Context, r *cluster.Reporter) {
	images := runtimeapi.NewImageServiceClient(d.conn)
	tick := time.NewTicker(reportInterval)
	defer tick.Stop()
	var lastErr string
	for {
		err := d.writeReport(ctx, r, images)
		if msg := fmt.Sprint(err); err != nil && msg != lastErr {
			d.logger.Warn("node report not brought up to date; trying again", "error", err)
		}
		lastErr = fmt.Sprint(err)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (d *daemon) writeReport(ctx context.Context, r *cluster.Reporter, images runtimeapi.ImageServiceClient) error {
	c, cancel := context.WithTimeout(ctx, reportInterval)
	defer cancel()
	audit, err := proxy.Audit(c, images, d.verifier, "")
	if err != nil {
		return err
	}
	entries := make([]cluster.ReportEntry, len(audit))
	for i, a := range audit {
		entries[i] = cluster.ReportEntry{Image: a.Image, ID: a.ID, Verdict: a.Verdict, Rule: a.Rule, Reason: a.Reason}
	}
	return r.Write(c, entries)
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
