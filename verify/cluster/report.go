package cluster

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"time"

	reports "github.com/openreports/reports-api/apis/openreports.io/v1alpha1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
)

// ReportResource is OpenReports' ClusterReport, which Kyverno's and Policy Reporter's tools read.
var ReportResource = schema.GroupVersionResource{Group: "openreports.io", Version: "v1alpha1", Resource: "clusterreports"}

const (
	reportSource = "pullgate"
	// MaxReportResults bounds a report (etcd has been filled by policy reports before): the
	// results that need attention come first, the summary counts every image.
	MaxReportResults = 500
	// OmittedAnnotation says how many results a report left out.
	OmittedAnnotation = "pullgate.io/omitted-results"
)

// ReportEntry is one image in the node's store and what the policy decides for it, as
// `pullgate audit` prints it.
type ReportEntry struct {
	Image, ID, Verdict, Rule, Reason string
}

// ReportName is the name of node's report: a node may write only this one.
func ReportName(node string) string { return "pullgate-" + node }

// Reporter keeps the node's ClusterReport current, writing only when its content changes.
type Reporter struct {
	dyn    dynamic.Interface
	core   kubernetes.Interface
	node   string
	logger *slog.Logger

	written [32]byte  // content last written, with the Node's UID
	at      time.Time // when
	missing bool      // the CRD's absence was logged
}

// NewReporter writes node's report with the node's identity.
func NewReporter(dyn dynamic.Interface, core kubernetes.Interface, node string, logger *slog.Logger) *Reporter {
	return &Reporter{dyn: dyn, core: core, node: node, logger: logger}
}

// result orders verdicts by how much they need attention.
var results = map[string]struct {
	result reports.Result
	rank   int
}{
	"denied":  {"fail", 0},
	"warned":  {"warn", 1},
	"unknown": {"skip", 2},
	"allowed": {"pass", 3},
}

// Report is the ClusterReport for entries on node, without its owner.
func Report(node string, entries []ReportEntry) *reports.ClusterReport {
	sorted := slices.Clone(entries)
	slices.SortStableFunc(sorted, func(a, b ReportEntry) int { return results[a.Verdict].rank - results[b.Verdict].rank })
	r := &reports.ClusterReport{
		TypeMeta:      metav1.TypeMeta{APIVersion: ReportResource.GroupVersion().String(), Kind: "ClusterReport"},
		ObjectMeta:    metav1.ObjectMeta{Name: ReportName(node), Labels: map[string]string{"app.kubernetes.io/managed-by": "pullgate"}},
		Source:        reportSource,
		Scope:         &corev1.ObjectReference{APIVersion: "v1", Kind: "Node", Name: node},
		Configuration: &reports.ReportConfiguration{Limits: reports.Limits{MaxResults: MaxReportResults}},
	}
	for i, e := range sorted {
		res := results[e.Verdict]
		switch res.result {
		case "fail":
			r.Summary.Fail++
		case "warn":
			r.Summary.Warn++
		case "skip":
			r.Summary.Skip++
		case "pass":
			r.Summary.Pass++
		default:
			r.Summary.Error++
			res.result = "error"
		}
		if i >= MaxReportResults {
			continue
		}
		r.Results = append(r.Results, reports.ReportResult{
			Source: reportSource, Policy: e.Rule, Result: res.result, Description: truncate(e.Reason, maxReasonRunes),
			Properties: map[string]string{"node": node, "image": e.Image, "imageID": e.ID, "verdict": e.Verdict},
		})
	}
	if n := len(sorted) - len(r.Results); n > 0 {
		r.Annotations = map[string]string{OmittedAnnotation: strconv.Itoa(n)}
	}
	return r
}

// maxReasonRunes bounds each result's message, so that the report stays far below the API
// server's request limit (500 results of 1 KiB).
const maxReasonRunes = 1024

func truncate(s string, n int) string {
	if r := []rune(s); len(r) > n {
		return string(r[:n]) + "..."
	}
	return s
}

// rewriteAfter is how long an unchanged report is trusted to be there: one deleted by hand, or
// with an earlier Node of the same name, is written again.
const rewriteAfter = 10 * time.Minute

// Write puts entries in the node's report, owned by its Node so that deleting the node deletes
// the report.
func (w *Reporter) Write(ctx context.Context, entries []ReportEntry) error {
	r := Report(w.node, entries)
	content, err := json.Marshal(struct {
		S reports.ReportSummary
		R []reports.ReportResult
		A map[string]string
	}{r.Summary, r.Results, r.Annotations})
	if err != nil {
		return err
	}
	node, err := w.core.CoreV1().Nodes().Get(ctx, w.node, metav1.GetOptions{ResourceVersion: "0"})
	if err != nil {
		return fmt.Errorf("report: the node's Node object: %w", err)
	}
	sum := sha256.Sum256(append(content, node.UID...))
	if sum == w.written && time.Since(w.at) < rewriteAfter {
		return nil
	}
	r.Scope.UID = node.UID
	r.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: node.Name, UID: node.UID}}
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(r)
	if err != nil {
		return err
	}
	obj := &unstructured.Unstructured{Object: m}
	res := w.dyn.Resource(ReportResource)
	cur, err := res.Get(ctx, r.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		_, err = res.Create(ctx, obj, metav1.CreateOptions{})
	case err == nil:
		obj.SetResourceVersion(cur.GetResourceVersion())
		_, err = res.Update(ctx, obj, metav1.UpdateOptions{})
	}
	if err != nil {
		if apierrors.IsNotFound(err) && !w.missing {
			w.missing = true
			w.logger.Warn("node report not written: OpenReports' ClusterReport CRD is not installed; kubectl apply -f systemd/cluster/openreports/openreports.io_clusterreports.yaml (or install OpenReports)", "error", err)
		}
		return fmt.Errorf("report %s: %w", r.Name, err)
	}
	w.missing = false
	w.written, w.at = sum, time.Now()
	return nil
}
