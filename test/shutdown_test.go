package test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/pullgate/pullgate/test/harness"
)

// SIGTERM lets a pull in flight finish with its real answer, and cuts it off after the grace
// period if it does not.
func TestGracefulShutdown(t *testing.T) {
	t.Parallel()
	ctrd := harness.StartContainerd(t, harness.ContainerdBinaries(t)["1.6"])
	for _, tc := range []struct {
		name    string
		grace   string
		release bool
	}{
		{name: "in-flight pull finishes", grace: "60s", release: true},
		{name: "grace period ends it", grace: "1s", release: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// A registry that holds every request until released.
			arrived := make(chan struct{}, 16)
			release := make(chan struct{})
			reg := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				arrived <- struct{}{}
				select {
				case <-release:
				case <-r.Context().Done():
				}
				http.Error(w, `{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}`, http.StatusNotFound)
			}))
			t.Cleanup(reg.Close)
			t.Cleanup(func() {
				select {
				case <-release:
				default:
					close(release)
				}
			})
			host := strings.TrimPrefix(reg.URL, "http://")
			ctrd.HostsTOML(host, reg.URL, "")
			gate := harness.StartPullgate(t, harness.PullgateBinary(t), fmt.Sprintf(
				"apiVersion: pullgate.io/v1alpha1\nkind: PullgateConfig\nruntimeEndpoint: %s\nregistryConfigPath: %s\nstateDir: /tmp\nmetricsAddress: 127.0.0.1:0\nshutdownGracePeriod: %s\ndefaultAction: allow\n",
				ctrd.Endpoint, ctrd.CertsDir, tc.grace))
			images := imageService(t, gate.Endpoint)

			errc := make(chan error, 1)
			go func() {
				_, err := images.PullImage(t.Context(), &runtimeapi.ImageSpec{Image: host + "/slow/app:v1"}, nil, nil)
				errc <- err
			}()
			<-arrived
			gate.Signal(syscall.SIGTERM)
			gate.WaitLog("shutting down", nil)
			if tc.release {
				close(release)
			}
			err := <-errc
			st, _ := status.FromError(err)
			if tc.release {
				// The answer pullgate gives once the registry answers, not a dropped connection.
				if st.Code() != codes.Unknown || !strings.Contains(st.Message(), "404 Not Found") {
					t.Fatalf("in-flight pull got %v, want the registry's answer", err)
				}
			} else if st.Code() != codes.Unavailable && st.Code() != codes.Canceled {
				t.Fatalf("pull cut off by the grace period got %v, want Unavailable or Canceled", err)
			}
			if err := gate.Wait(30 * time.Second); err != nil {
				t.Fatalf("pullgate exit: %v", err)
			}
		})
	}
}
