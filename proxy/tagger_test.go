package proxy

import (
	"context"
	"errors"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// statusOnly answers ImageStatus with img and err; other methods are not used.
type statusOnly struct {
	runtimeapi.ImageServiceClient
	img *runtimeapi.Image
	err error
}

func (s statusOnly) ImageStatus(context.Context, *runtimeapi.ImageStatusRequest, ...grpc.CallOption) (*runtimeapi.ImageStatusResponse, error) {
	return &runtimeapi.ImageStatusResponse{Image: s.img}, s.err
}

// waitVisible's errors say what went wrong, and keep the runtime's error for callers to read.
func TestWaitVisibleErrors(t *testing.T) {
	t.Parallel()
	down := status.Error(codes.Unavailable, "connection refused")
	s := &ImageStore{cri: statusOnly{err: down}}
	err := s.waitVisible(t.Context(), "r.example.com/a:v1", "r.example.com/a@sha256:1")
	if !errors.Is(err, down) || strings.Contains(err.Error(), "<nil>") {
		t.Errorf("runtime down: %v, want the runtime's error wrapped", err)
	}
	s = &ImageStore{cri: statusOnly{}}
	err = s.waitVisible(t.Context(), "r.example.com/a:v1", "r.example.com/a@sha256:1")
	if err == nil || strings.Contains(err.Error(), "<nil>") || !strings.Contains(err.Error(), "does not show r.example.com/a@sha256:1") {
		t.Errorf("image missing: %v, want a message naming it", err)
	}
}
