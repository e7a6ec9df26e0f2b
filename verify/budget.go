package verify

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
)

type budgetKey struct{}

// budget is what one verification (or one resolution) may still read from registries, in bytes.
type budget struct {
	limit int64
	left  atomic.Int64
	// exceeded is the denial's message, with %d for the limit.
	message string
}

// withBudget bounds the bytes that registry responses read under ctx may carry, manifests and
// signature layers alike; max <= 0 means no bound. message is the denial once it is spent,
// with %d for max.
func withBudget(ctx context.Context, max int64, message string) context.Context {
	if max <= 0 {
		return ctx
	}
	b := &budget{limit: max, message: message}
	b.left.Store(max)
	return context.WithValue(ctx, budgetKey{}, b)
}

// budgetTransport charges response bodies to the budget in the request's context.
type budgetTransport struct{ inner http.RoundTripper }

func (t budgetTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.inner.RoundTrip(req)
	b, _ := req.Context().Value(budgetKey{}).(*budget)
	if err != nil || b == nil {
		return resp, err
	}
	if resp.ContentLength > b.left.Load() {
		resp.Body.Close()
		return nil, b.exceeded()
	}
	resp.Body = &budgetBody{ReadCloser: resp.Body, b: b}
	return resp, nil
}

func (b *budget) exceeded() error {
	return &Denial{fmt.Sprintf(b.message, b.limit)}
}

type budgetBody struct {
	io.ReadCloser
	b *budget
}

func (r *budgetBody) Read(p []byte) (int, error) {
	n, err := r.ReadCloser.Read(p)
	if r.b.left.Add(-int64(n)) < 0 {
		return n, r.b.exceeded()
	}
	return n, err
}
