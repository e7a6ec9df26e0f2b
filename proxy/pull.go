package proxy

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/pullgate/pullgate/verify"
	"github.com/pullgate/pullgate/verify/auth"
)

// PullImage resolves the image to a digest, asks the policy about that digest, has the runtime
// pull exactly that digest, and records the tag, so the runtime never pulls what was not checked.
func (p *Proxy) PullImage(ctx context.Context, req *runtimeapi.PullImageRequest) (*runtimeapi.PullImageResponse, error) {
	start := time.Now()
	ref := req.GetImage().GetImage()
	log := p.logger.With("image", ref, "namespace", req.GetSandboxConfig().GetMetadata().GetNamespace(), "pod", req.GetSandboxConfig().GetMetadata().GetName())

	resp, d, err := p.pull(ctx, req)
	if err == nil {
		// The image may have been hidden for want of a decision it has now.
		p.statuses.drop()
	}
	attrs := []any{"duration", time.Since(start)}
	if d.resolve > 0 {
		attrs = append(attrs, "resolveDuration", d.resolve)
	}
	if d.runtime > 0 {
		attrs = append(attrs, "runtimeDuration", d.runtime)
	}
	if d.digest != "" {
		attrs = append(attrs, "digest", d.digest.String())
	}
	if d.rule != "" {
		attrs = append(attrs, "rule", d.rule)
	}
	if d.verify > 0 {
		attrs = append(attrs, "verifyDuration", d.verify, "cached", d.cached, "shared", d.shared)
	}
	if d.held {
		attrs = append(attrs, "alreadyPresent", true)
	}
	if d.recalled {
		attrs = append(attrs, "registryDown", true)
	}
	switch {
	case err == nil && d.verdict == verdictWarned:
		log.Warn("pull allowed with warning", append(attrs, "verdict", d.verdict, "reason", d.reason)...)
	case err == nil:
		log.Info("pull allowed", append(attrs, "verdict", d.verdict)...)
	case d.verdict == verdictDenied:
		log.Warn("pull denied", append(attrs, "verdict", "denied", "reason", d.reason)...)
	default:
		log.Error("pull failed", append(attrs, "verdict", d.verdict, "error", err)...)
	}
	if p.metrics != nil {
		p.metrics.decisions.WithLabelValues(d.verdict, d.rule).Inc()
		if err != nil && strings.HasPrefix(status.Convert(err).Message(), "RegistryUnavailable: ") {
			p.metrics.unavailable.Inc()
		}
		if d.cached {
			p.metrics.cacheHits.Inc()
		} else if d.verify > 0 && !d.shared && d.mode != "" && d.mode != verify.Skip {
			p.metrics.verification.Observe(d.verify.Seconds())
		}
	}
	return resp, err
}

const (
	verdictAllowed = "allowed"
	// verdictWarned is a pull allowed by a warn-mode rule although verification failed.
	verdictWarned = "warned"
	verdictDenied = "denied"
	verdictError  = "error"
)

// outcome is what PullImage logs and counts.
type outcome struct {
	digest  digest.Digest
	rule    string
	verdict string
	reason  string
	mode    verify.Mode
	cached  bool
	shared  bool
	// held is set when the pull was answered from the image the runtime holds, without
	// asking it to pull; recalled when that was because the registry is down.
	held, recalled bool
	// resolve, verify and runtime are the time spent asking the registry, checking the policy
	// and asking the runtime, so that pullgate's own share of a pull can be told apart.
	resolve, verify, runtime time.Duration
}

func (p *Proxy) pull(ctx context.Context, req *runtimeapi.PullImageRequest) (*runtimeapi.PullImageResponse, outcome, error) {
	out := outcome{verdict: verdictError}
	img, err := verify.ParseImage(req.GetImage().GetImage())
	if err != nil {
		return nil, out, status.Error(codes.InvalidArgument, "pullgate: "+err.Error())
	}
	creds, err := p.credentials(img, req.GetAuth())
	if err != nil {
		return nil, out, status.Error(codes.InvalidArgument, "pullgate: "+err.Error())
	}

	v := p.verifier()
	checked, err := verify.Check(ctx, p.resolver, v, img, req.GetSandboxConfig().GetMetadata().GetNamespace(), creds)
	decision, cred := checked.Decision, checked.Credential
	out.digest, out.resolve, out.verify = checked.Digest, checked.Resolve, checked.Verify
	out.rule, out.mode, out.cached, out.shared = decision.Rule, decision.Mode, decision.Cached, decision.Shared
	if err != nil {
		return nil, out, pullError(ctx, err)
	}
	pinned := img.Pinned(out.digest)
	switch {
	case !decision.Allowed && out.digest == "":
		// Decided by the name alone, before any registry request.
		out.verdict, out.reason = verdictDenied, decision.Reason
		return nil, out, status.Errorf(codes.Unknown, "SignatureValidationFailed: pullgate: %s denied: %s", img, decision.Reason)
	case !decision.Allowed:
		out.verdict, out.reason = verdictDenied, decision.Reason
		return nil, out, status.Errorf(codes.Unknown, "SignatureValidationFailed: pullgate: %s denied by policy %q: %s", pinned, decision.Rule, decision.Reason)
	}

	if checked.Recalled != nil || decision.Stored {
		// The registry is down, and containerd would ask it again. A digest the node allowed
		// before and still holds is answered from the store, so that containers of verified
		// images restart through an outage; but only for credentials the registry served it
		// to, since no request checks this pull's now.
		ref, err := p.presentImage(ctx, pinned.String())
		switch {
		case err != nil:
			return nil, out, err
		case ref != "" && !v.ServedTo(img, out.digest, creds):
			return nil, out, status.Errorf(codes.Unknown, "RegistryUnavailable: pullgate: %s: the registry cannot be asked now, and it never served this image to the credentials of this pull; the node holds the image but cannot check them (%s)", pinned, outageCause(checked.Recalled))
		case ref != "":
			out.held, out.recalled = true, true
			return p.allowed(ctx, v, img, pinned, cred, decision, &runtimeapi.PullImageResponse{ImageRef: ref}, &out)
		case checked.Recalled != nil:
			return nil, out, pullError(ctx, checked.Recalled)
		}
	}

	if p.holder != nil && img.Digest == "" && runtimeHandler(req) == "" {
		// imagePullPolicy: Always makes every container start a pull of an image the node
		// already has. The resolve above asked the registry with this pull's credentials, which
		// is all the runtime would do before finding it has everything. (A pull by digest made
		// no registry request yet, and a runtime handler may name another snapshotter: those go
		// to the runtime.)
		id, err := p.holder.Unpacked(ctx, pinned.String())
		switch {
		case err != nil:
			p.logger.Warn("could not tell whether the runtime holds the image; asking it to pull", "image", pinned.String(), "error", err)
		case id != "":
			out.held = true
			return p.allowed(ctx, v, img, pinned, cred, decision, &runtimeapi.PullImageResponse{ImageRef: id}, &out)
		}
	}

	fwd := proto.CloneOf(req)
	fwd.Image.Image = pinned.String()
	if req.GetAuth() == nil && !cred.IsZero() {
		fwd.Auth = &runtimeapi.AuthConfig{Username: cred.Username, Password: cred.Password, IdentityToken: cred.IdentityToken, RegistryToken: cred.RegistryToken}
	}
	if fwd.Auth != nil && fwd.Auth.ServerAddress == "" {
		// containerd sends credentials without a server address to every endpoint of the
		// registry, mirrors included; with one, only to the registry itself.
		fwd.Auth.ServerAddress = "https://" + registryServer(img.Registry)
	}
	runtimeStart := time.Now()
	// Concurrent pulls of one digest with the same credentials and snapshotter are one pull for
	// containerd, which would otherwise resolve it at the registry once for each.
	resp, _, err := p.runtimePulls.Do(ctx, runtimePullKey(fwd), func(ctx context.Context) (*runtimeapi.PullImageResponse, error) {
		return p.images.PullImage(ctx, fwd)
	})
	out.runtime = time.Since(runtimeStart)
	if err != nil {
		return nil, out, err // the runtime's own error, unchanged
	}
	return p.allowed(ctx, v, img, pinned, cred, decision, resp, &out)
}

// allowed records img's tag for the digest the runtime now holds as pinned, and that the
// registry served it to cred unless it was not asked, and returns resp.
func (p *Proxy) allowed(ctx context.Context, v Verifier, img, pinned verify.Image, cred auth.Credential, decision verify.Decision, resp *runtimeapi.PullImageResponse, out *outcome) (*runtimeapi.PullImageResponse, outcome, error) {
	if !out.recalled {
		v.Served(img, out.digest, cred)
	}
	if img.Tag != "" {
		if err := p.tagger.Tag(ctx, img.String(), pinned.String()); err != nil {
			return nil, *out, status.Errorf(codes.Unknown, "pullgate: pulled %s but could not record tag %s: %v", pinned, img, err)
		}
	}
	out.verdict = verdictAllowed
	if decision.Reason != "" {
		out.verdict, out.reason = verdictWarned, decision.Reason
	}
	return resp, *out, nil
}

// outageCause says why the registry could not be asked: the resolve's error, or for a pull by
// digest the verification's, which the decision stored for the digest stood in for.
func outageCause(recalled error) string {
	if recalled != nil {
		return recalled.Error()
	}
	return "verification could not reach it; the decision stored for this digest stood in"
}

// presentImage returns the ID of the image the runtime holds for pinned ("repo@digest"), or ""
// when it holds none.
func (p *Proxy) presentImage(ctx context.Context, pinned string) (string, error) {
	st, err := p.imageClient.ImageStatus(outgoing(ctx), &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: pinned}})
	if err != nil {
		return "", err // the runtime's own error
	}
	return st.GetImage().GetId(), nil
}

// credentials returns the credentials to try, in order. kubelet's own choice is used alone and
// only for the image's registry; without one, the node's files are tried, then anonymous access.
func (p *Proxy) credentials(img verify.Image, a *runtimeapi.AuthConfig) ([]auth.Credential, error) {
	if a != nil {
		if a.ServerAddress != "" && !auth.MatchesRegistry(a.ServerAddress, img.Registry) {
			return nil, fmt.Errorf("credentials are for %q, not for the image's registry %q", a.ServerAddress, img.Registry)
		}
		c := auth.Credential{Username: a.Username, Password: a.Password, IdentityToken: a.IdentityToken, RegistryToken: a.RegistryToken}
		if a.Auth != "" && c.Username == "" && c.Password == "" {
			dec, err := base64.StdEncoding.DecodeString(a.Auth)
			user, pass, ok := strings.Cut(string(dec), ":")
			if err != nil || !ok {
				return nil, errors.New(`credentials: the "auth" field is not base64 of "user:password"`)
			}
			c.Username, c.Password = user, pass
		}
		return []auth.Credential{c}, nil
	}
	creds, err := p.keyring.Lookup(img.Name())
	if err != nil {
		// A broken entry in one file must not stop the node's other credentials from working.
		p.logger.Warn("node credential files have problems", "image", img.Name(), "error", err)
	}
	return append(creds, auth.Credential{}), nil
}

// runtimePull is what makes two pulls the same for the runtime.
type runtimePull struct {
	image, auth, handler string
}

func runtimePullKey(req *runtimeapi.PullImageRequest) runtimePull {
	a, _ := proto.MarshalOptions{Deterministic: true}.Marshal(req.GetAuth())
	return runtimePull{req.GetImage().GetImage(), string(a), runtimeHandler(req)}
}

// runtimeHandlerAnnotation is the sandbox annotation containerd reads for the runtime handler
// when the image spec names none (deprecated in containerd 2.x, still honoured).
const runtimeHandlerAnnotation = "io.containerd.cri.runtime-handler"

// runtimeHandler is the runtime handler the pull is for, which may choose the snapshotter.
func runtimeHandler(req *runtimeapi.PullImageRequest) string {
	if h := req.GetImage().GetRuntimeHandler(); h != "" {
		return h
	}
	return req.GetSandboxConfig().GetAnnotations()[runtimeHandlerAnnotation]
}

// registryServer is the host containerd talks to for a registry's own endpoint.
func registryServer(registry string) string {
	if registry == "docker.io" {
		return "registry-1.docker.io"
	}
	return registry
}
