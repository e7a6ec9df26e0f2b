package main

import (
	"context"
	"fmt"
	"os"
	"sync"

	internalapi "k8s.io/cri-api/pkg/apis"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/pullgate/pullgate/test/harness"
)

// benchRequests counts what each operation asks a token registry, through pullgate and for the
// same work straight to containerd and with the cosign CLI.
func benchRequests(t *harness.Program, ctx context.Context, reg *harness.Registry, direct, proxied internalapi.ImageManagerService, auth *runtimeapi.AuthConfig, key *harness.Key, bundleKey *harness.BundleKey, keyFile string) {
	type counted struct {
		op string
		r  harness.Requests
	}
	var rows []counted
	count := func(op string, f func()) {
		reg.Reset()
		f()
		rows = append(rows, counted{op, reg.Requests()})
	}
	pull := func(s internalapi.ImageManagerService, ref string) {
		if _, err := s.PullImage(ctx, &runtimeapi.ImageSpec{Image: reg.Host + "/" + ref}, auth, nil); err != nil {
			t.Fatal(err)
		}
	}

	sig := reg.PushRandomImage(t, "counted/sig", "v1")
	reg.Sign(t, key, "counted/sig", hash(t, sig))
	bundled := reg.PushRandomImage(t, "counted/bundle", "v1")
	reg.SignBundle(t, bundleKey, "counted/bundle", hash(t, bundled))
	reg.PushRandomImage(t, "counted/plain", "v1")
	shared := reg.PushRandomImage(t, "counted/shared", "v1")
	reg.Sign(t, key, "counted/shared", hash(t, shared))

	count("cold pull, cosign .sig signature, through pullgate", func() { pull(proxied, "counted/sig:v1") })
	count("cold pull, sigstore bundle (referrers), through pullgate", func() { pull(proxied, "counted/bundle:v1") })
	count("cold pull of an image of the same size, straight to containerd (no verification)", func() { pull(direct, "counted/plain:v1") })
	count("warm pull by tag, through pullgate", func() { pull(proxied, "counted/sig:v1") })
	count("warm pull by tag, straight to containerd", func() { pull(direct, "counted/sig:v1") })
	count("20 concurrent cold pulls of one signed image, through pullgate", func() {
		var wg sync.WaitGroup
		for range 20 {
			wg.Go(func() { pull(proxied, "counted/shared:v1") })
		}
		wg.Wait()
	})
	dockerDir, err := os.MkdirTemp("", "bench-docker-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dockerDir) })
	creds := reg.DockerConfig(t, dockerDir)
	if cosignBinary() != "" {
		count("`cosign verify --key` of the .sig image (CLI, one run)", func() { cosignOnce(t, keyFile, creds, reg.Host+"/counted/sig@"+hash(t, sig).String()) })
	}

	fmt.Printf("\nregistry requests per operation, token-auth registry (authorized requests by kind, plus 401 challenges and token grants):\n\n")
	fmt.Printf("| operation | manifest HEAD | manifest GET | blob GET | 401 | token | total |\n|---|---|---|---|---|---|---|\n")
	for _, c := range rows {
		heads, gets := sum(c.r.ManifestHEAD), sum(c.r.ManifestGET)
		fmt.Printf("| %s | %d | %d | %d | %d | %d | %d |\n", c.op, heads, gets, c.r.BlobGET, c.r.Unauthorized, c.r.Tokens,
			heads+gets+c.r.BlobGET+c.r.Unauthorized+c.r.Tokens)
	}
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}
