package proxy

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pullgate/pullgate/verify"
)

// pullError maps a failure to decide on a pull to the CRI error kubelet understands: kubelet
// reads the reason from the message prefix of a status with code Unknown. A deadline or a
// cancellation that is the caller's own is reported as such; one inside pullgate's own bounds
// is the registry being slow.
func pullError(ctx context.Context, err error) error {
	switch {
	case ctx.Err() != nil && errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "pullgate: "+err.Error())
	case ctx.Err() != nil && errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, "pullgate: "+err.Error())
	}
	switch verify.KindOf(err) {
	case verify.Denied:
		return status.Error(codes.Unknown, "SignatureValidationFailed: pullgate: "+err.Error())
	case verify.Unavailable:
		return status.Error(codes.Unknown, "RegistryUnavailable: pullgate: "+err.Error())
	}
	return status.Error(codes.Unknown, "pullgate: "+err.Error())
}
