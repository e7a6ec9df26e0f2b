package verify

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/pullgate/pullgate/verify/auth"
	"github.com/pullgate/pullgate/verify/state"
)

// Evidence is kept as the registry's own answers to the verifier's requests, rather than as
// signatures picked out of them: replayed, they let the very code that verified a digest check
// it again under a changed policy, offline, with nothing that could be decoded differently.

type recorderKey struct{}

// evidenceRecorder keeps the answers one verification read.
type evidenceRecorder struct {
	mu        sync.Mutex
	responses map[string]state.Response
}

func withRecorder(ctx context.Context, rec *evidenceRecorder) context.Context {
	if rec == nil {
		return ctx
	}
	return context.WithValue(ctx, recorderKey{}, rec)
}

func (r *evidenceRecorder) evidence(repo name.Repository) *state.Evidence {
	r.mu.Lock()
	defer r.mu.Unlock()
	return &state.Evidence{Repository: repo.String(), Insecure: repo.Scheme() == "http", Responses: r.responses}
}

// responseKey names a request the same way when it is recorded and when it is replayed.
func responseKey(req *http.Request) string {
	return req.Method + " " + req.URL.Host + req.URL.RequestURI()
}

// origin is the request a redirect was followed from, or req itself.
func origin(req *http.Request) *http.Request {
	for req.Response != nil && req.Response.Request != nil {
		req = req.Response.Request
	}
	return req
}

// content tells the requests for a repository's content (manifests, blobs, referrers), and
// redirects followed from them to a blob store, from everything else: pings, and token
// requests, whose answers are credentials and are never kept.
func content(req *http.Request) bool {
	p := origin(req).URL.Path
	return strings.HasPrefix(p, "/v2/") && (strings.Contains(p, "/manifests/") || strings.Contains(p, "/blobs/") || strings.Contains(p, "/referrers/"))
}

// keptHeaders are the response headers go-containerregistry and cosign read. Location is not
// among them: redirects are not kept (blob stores sign their URLs with credentials).
var keptHeaders = []string{"Content-Type", "Content-Length", "Docker-Content-Digest", "Link", "OCI-Filters-Applied"}

// recordTransport keeps the answers to content requests made under a context with a recorder.
// Token requests are not content requests: what the registry said about its content is kept,
// never how the verifier got in. A redirect is kept as the answer it led to, under the registry's own request: blobs are
// addressed by digest, and the blob store's signed URL never reaches the state.
type recordTransport struct{ inner http.RoundTripper }

func (t recordTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.inner.RoundTrip(req)
	rec, _ := req.Context().Value(recorderKey{}).(*evidenceRecorder)
	if err != nil || rec == nil || !content(req) || (resp.StatusCode >= 300 && resp.StatusCode < 400) {
		return resp, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	r := state.Response{Status: resp.StatusCode, Header: http.Header{}}
	if req.Method != http.MethodHead {
		r.Body = body
	}
	for _, h := range keptHeaders {
		if v := resp.Header.Values(h); len(v) > 0 {
			r.Header[h] = v
		}
	}
	rec.mu.Lock()
	if rec.responses == nil {
		rec.responses = map[string]state.Response{}
	}
	rec.responses[responseKey(origin(req))] = r
	rec.mu.Unlock()
	return resp, nil
}

// replay is a Registry that answers from stored evidence and never touches the network.
type replay struct{ ev *state.Evidence }

var _ Registry = replay{}

func (r replay) Repository(ctx context.Context, _ Image, _ auth.Credential) (name.Repository, []remote.Option, error) {
	var opts []name.Option
	if r.ev.Insecure {
		opts = append(opts, name.Insecure)
	}
	repo, err := name.NewRepository(r.ev.Repository, opts...)
	if err != nil {
		return name.Repository{}, nil, fmt.Errorf("stored evidence names repository %q: %w", r.ev.Repository, err)
	}
	return repo, []remote.Option{remote.WithContext(ctx), remote.WithTransport(budgetTransport{replayTransport{r.ev}})}, nil
}

// replayTransport answers requests with the recorded responses. A request the evidence holds no
// answer for is an error, never an empty answer: the check then cannot be settled offline.
type replayTransport struct{ ev *state.Evidence }

func (t replayTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body != nil {
		req.Body.Close()
	}
	if req.URL.Path == "/v2/" || req.URL.Path == "/v2" {
		// The ping: no challenge, so no token is asked for.
		return &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, Body: io.NopCloser(strings.NewReader("{}")), ContentLength: 2, Request: req}, nil
	}
	r, ok := t.ev.Responses[responseKey(req)]
	if !ok {
		return nil, fmt.Errorf("%s %s is not in the evidence stored when the image was verified", req.Method, req.URL.Path)
	}
	size := int64(len(r.Body))
	if req.Method == http.MethodHead {
		size, _ = strconv.ParseInt(r.Header.Get("Content-Length"), 10, 64)
	}
	return &http.Response{
		Status:        fmt.Sprintf("%d %s", r.Status, http.StatusText(r.Status)),
		StatusCode:    r.Status,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        r.Header.Clone(),
		Body:          io.NopCloser(bytes.NewReader(r.Body)),
		ContentLength: size,
		Request:       req,
	}, nil
}
