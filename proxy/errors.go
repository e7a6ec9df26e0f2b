package proxy

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pullgate/pullgate/verify"
)

// pullError maps a failure to decide on a pull to the CRI error kubelet understands: kubelet
// reads the reason from the message prefix of a status with code Unknown.
func pullError(err error) error {
	switch {
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "pullgate: "+err.Error())
	case errors.Is(err, context.DeadlineExceeded) && !isRegistryError(err):
		return status.Error(codes.DeadlineExceeded, "pullgate: "+err.Error())
	}
	var re *verify.RegistryError
	if errors.As(err, &re) && re.Unavailable {
		return status.Error(codes.Unknown, "RegistryUnavailable: pullgate: "+err.Error())
	}
	return status.Error(codes.Unknown, "pullgate: "+err.Error())
}

func isRegistryError(err error) bool {
	var re *verify.RegistryError
	return errors.As(err, &re)
}
