package main

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/pullgate/pullgate/test/harness"
	"github.com/pullgate/pullgate/verify"
	"github.com/pullgate/pullgate/verify/cluster"
)

// benchClusterWatchers starts n node watchers of NodeImagePolicies against one API server, each
// with its own node identity (the watch pullgate runs on every node, without the rest of
// pullgate), changes a policy several times, and measures write-to-applied on every watcher and
// the API server's load.
func benchClusterWatchers(t *harness.Program, n, changes int, key *harness.Key) {
	bins := harness.ControlPlaneBinaries(t)
	c := harness.StartCluster(t, bins)
	ctx := context.Background()
	dyn, err := dynamic.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	harness.CreateManifests(t, dyn, "systemd/cluster/nodeimagepolicies.yaml", "systemd/cluster/rbac.yaml")
	c.Wait("the NodeImagePolicy CRD to be served", time.Minute, func() (bool, error) {
		_, err := dyn.Resource(cluster.Resource).List(ctx, metav1.ListOptions{})
		return err == nil, nil
	})
	policy := func(gen int) *unstructured.Unstructured {
		spec := cluster.Spec{Order: gen, Rules: []verify.RuleSpec{{Name: "apps", Images: []string{"registry.example.com/apps/**"}, Mode: verify.Enforce,
			Authorities: []verify.AuthoritySpec{{Name: "release", Key: &verify.KeySpec{Data: string(key.PublicPEM)}, IgnoreTransparencyLog: true}}}}}
		m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&cluster.NodeImagePolicy{
			TypeMeta: metav1.TypeMeta{APIVersion: cluster.Resource.GroupVersion().String(), Kind: cluster.Kind}, ObjectMeta: metav1.ObjectMeta{Name: "fleet"}, Spec: spec})
		if err != nil {
			t.Fatal(err)
		}
		return &unstructured.Unstructured{Object: m}
	}
	if _, err := dyn.Resource(cluster.Resource).Create(ctx, policy(0), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	fmt.Fprintf(os.Stderr, "starting %d node watchers, each with its own node identity...\n", n)
	type seen struct {
		order int
		at    time.Time
	}
	var mu sync.Mutex
	applied := map[string][]seen{}
	ready := make(chan string, n)
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	for i := range n {
		name := fmt.Sprintf("node-%03d", i)
		if _, err := c.Client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"pool": "fleet"}}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		rc, err := clientcmd.BuildConfigFromFlags("", c.NodeKubeconfig(name))
		if err != nil {
			t.Fatal(err)
		}
		nd, err := dynamic.NewForConfig(rc)
		if err != nil {
			t.Fatal(err)
		}
		nc, err := kubernetes.NewForConfig(rc)
		if err != nil {
			t.Fatal(err)
		}
		w := cluster.NewWatcher(nd, nc, name, nil, func(p *cluster.NodeImagePolicy) error {
			return cluster.Check(p, verify.Settings{MaxSignatures: 1, MaxBytes: 1})
		},
			func(a []cluster.Applied) error {
				at := time.Now()
				mu.Lock()
				defer mu.Unlock()
				for _, o := range a {
					applied[name] = append(applied[name], seen{o.Spec.Order, at})
					if o.Spec.Order == 0 {
						ready <- name
					}
				}
				return nil
			}, cluster.WithLogger(slog.New(slog.DiscardHandler)))
		go w.Run(wctx)
	}
	for range n {
		select {
		case <-ready:
		case <-time.After(2 * time.Minute):
			t.Fatal("not every watcher applied the first policy within 2 minutes")
		}
	}

	before := apiMetrics(t, c)
	start := time.Now()
	var latencies, writes samples
	for g := 1; g <= changes; g++ {
		cur, err := dyn.Resource(cluster.Resource).Get(ctx, "fleet", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		obj := policy(g)
		obj.SetResourceVersion(cur.GetResourceVersion())
		wrote := time.Now()
		if _, err := dyn.Resource(cluster.Resource).Update(ctx, obj, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		writes = append(writes, time.Since(wrote))
		deadline := time.Now().Add(time.Minute)
		for {
			mu.Lock()
			done := 0
			for _, s := range applied {
				if i := slices.IndexFunc(s, func(x seen) bool { return x.order == g }); i >= 0 {
					done++
				}
			}
			mu.Unlock()
			if done == n {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("change %d applied on %d of %d watchers within a minute", g, done, n)
			}
			time.Sleep(5 * time.Millisecond)
		}
		mu.Lock()
		for _, s := range applied {
			i := slices.IndexFunc(s, func(x seen) bool { return x.order == g })
			latencies = append(latencies, s[i].at.Sub(wrote))
		}
		mu.Unlock()
	}
	elapsed := time.Since(start)
	after := apiMetrics(t, c)
	slices.Sort(latencies)
	slices.Sort(writes)

	fmt.Printf("\nNodeImagePolicy changes, %d watchers with their own node identities against one kube-apiserver (%d changes, %d applies):\n\n", n, changes, len(latencies))
	fmt.Printf("| write to applied | p50 | p99 | max |\n|---|---|---|---|\n")
	fmt.Printf("| every watcher | %s | %s | %s |\n", ms(latencies.p(50)), ms(latencies.p(99)), ms(latencies[len(latencies)-1]))
	fmt.Printf("| (of which the write: the Update call's own time) | %s | %s | %s |\n", ms(writes.p(50)), ms(writes.p(99)), ms(writes[len(writes)-1]))
	fmt.Printf("\n| kube-apiserver | value |\n|---|---|\n")
	fmt.Printf("| watches of nodeimagepolicies open (apiserver_longrunning_requests) | %.0f |\n", after.watches["nodeimagepolicies"])
	fmt.Printf("| watches of nodes open | %.0f |\n", after.watches["nodes"])
	fmt.Printf("| requests during the changes, all clients (apiserver_request_total) | %.0f in %s (%.1f/s) |\n",
		after.requests-before.requests, elapsed.Round(time.Millisecond), (after.requests-before.requests)/elapsed.Seconds())
	fmt.Printf("| requests per watcher per change | %.2f |\n", (after.requests-before.requests)/float64(n*changes))
}

type apiLoad struct {
	watches  map[string]float64 // open watches by resource
	requests float64
}

// apiMetrics reads the API server's own metrics as the admin.
func apiMetrics(t *harness.Program, c *harness.Cluster) apiLoad {
	body, err := c.Client.CoreV1().RESTClient().Get().AbsPath("/metrics").Stream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer body.Close()
	load := apiLoad{watches: map[string]float64{}}
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		i := strings.LastIndexByte(line, ' ')
		if i < 0 || strings.HasPrefix(line, "#") {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		switch {
		case strings.HasPrefix(line, "apiserver_longrunning_requests{") && strings.Contains(line, `verb="WATCH"`):
			for _, r := range []string{"nodeimagepolicies", "nodes"} {
				if strings.Contains(line, `resource="`+r+`"`) {
					load.watches[r] += v
				}
			}
		case strings.HasPrefix(line, "apiserver_request_total{"):
			load.requests += v
		}
	}
	return load
}
