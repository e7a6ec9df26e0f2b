package proxy_test

import (
	"sync"
	"testing"

	"github.com/pullgate/pullgate/proxy"
	"github.com/pullgate/pullgate/verify/auth"
)

func TestSetKeyring(t *testing.T) {
	t.Parallel()
	nodeA := auth.Credential{Username: "node-a", Password: "pass-a"}
	nodeB := auth.Credential{Username: "node-b", Password: "pass-b"}
	tests := []struct {
		name    string
		initial *fakeKeyring // nil: no WithKeyring
		set     *fakeKeyring // nil: SetKeyring(nil)
		// wantResolve lists the credentials the tag is resolved with, in order.
		wantResolve []auth.Credential
	}{{
		name:        "switched off",
		initial:     &fakeKeyring{creds: []auth.Credential{nodeA}},
		wantResolve: []auth.Credential{{}},
	}, {
		name:        "switched on",
		set:         &fakeKeyring{creds: []auth.Credential{nodeB}},
		wantResolve: []auth.Credential{nodeB},
	}, {
		name:        "replaced",
		initial:     &fakeKeyring{creds: []auth.Credential{nodeA}},
		set:         &fakeKeyring{creds: []auth.Credential{nodeB}},
		wantResolve: []auth.Credential{nodeB},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var s setup
			if tc.initial != nil {
				s.opts = append(s.opts, proxy.WithKeyring(tc.initial))
			}
			e := start(t, s)
			if tc.set != nil {
				e.proxy.SetKeyring(tc.set)
			} else {
				e.proxy.SetKeyring(nil)
			}
			if _, err := e.imageClient().PullImage(t.Context(), pullRequest("registry.example.com/team/app:v1", nil)); err != nil {
				t.Fatal(err)
			}
			if tc.initial != nil && len(tc.initial.seen()) != 0 {
				t.Errorf("the replaced keyring was asked for %v", tc.initial.seen())
			}
			if tc.set != nil && len(tc.set.seen()) != 1 {
				t.Errorf("the keyring set was asked for %v, want one lookup", tc.set.seen())
			}
			got := e.resolver.seen()
			if len(got) != len(tc.wantResolve) || got[0].cred != tc.wantResolve[0] {
				t.Errorf("resolved with %v, want %v", got, tc.wantResolve)
			}
		})
	}
}

// TestSetKeyringWhilePulling is for the race detector: a reload swaps the keyring while
// kubelet pulls.
func TestSetKeyringWhilePulling(t *testing.T) {
	t.Parallel()
	k := &fakeKeyring{creds: []auth.Credential{{Username: "node-a", Password: "pass-a"}}}
	e := start(t, setup{opts: []proxy.Option{proxy.WithKeyring(k)}})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 10 {
				if _, err := e.imageClient().PullImage(t.Context(), pullRequest("registry.example.com/team/app:v1", nil)); err != nil {
					t.Error(err)
				}
			}
		})
	}
	for i := range 20 {
		if i%2 == 0 {
			e.proxy.SetKeyring(nil)
		} else {
			e.proxy.SetKeyring(k)
		}
	}
	wg.Wait()
}
