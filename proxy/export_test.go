package proxy

import runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

// RuntimePullsWaiting returns how many pulls wait for the runtime's pull of fwd, the request as
// forwarded.
func RuntimePullsWaiting(p *Proxy, fwd *runtimeapi.PullImageRequest) int {
	return p.runtimePulls.Waiting(runtimePullKey(fwd))
}
