package flight

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
)

func TestFlightShares(t *testing.T) {
	t.Parallel()
	var f Group[string, int]
	var runs atomic.Int32
	release := make(chan struct{})
	started := make(chan struct{})
	fn := func(context.Context) (int, error) {
		if runs.Add(1) == 1 {
			close(started)
		}
		<-release
		return 42, nil
	}
	const callers = 50
	var wg sync.WaitGroup
	results := make(chan int, callers)
	wg.Add(1)
	go func() {
		defer wg.Done()
		v, _, _ := f.Do(context.Background(), "k", fn)
		results <- v
	}()
	<-started
	for range callers - 1 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, _, _ := f.Do(context.Background(), "k", fn)
			results <- v
		}()
	}
	// Wait until every caller has joined the one call before letting it finish.
	for {
		f.mu.Lock()
		n := f.calls["k"].waiters
		f.mu.Unlock()
		if n == callers {
			break
		}
	}
	close(release)
	wg.Wait()
	close(results)
	for v := range results {
		if v != 42 {
			t.Fatalf("got %d, want 42", v)
		}
	}
	if n := runs.Load(); n != 1 {
		t.Fatalf("fn ran %d times, want 1", n)
	}
}

func TestFlightCancelledCallerCancelsOnlyItself(t *testing.T) {
	t.Parallel()
	var f Group[string, int]
	release := make(chan struct{})
	started := make(chan struct{})
	workCtx := make(chan context.Context, 1)
	fn := func(ctx context.Context) (int, error) {
		workCtx <- ctx
		close(started)
		<-release
		return 7, ctx.Err()
	}
	ctx1, cancel1 := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, _, err := f.Do(ctx1, "k", fn)
		errc <- err
	}()
	<-started
	got := make(chan int, 1)
	go func() {
		v, shared, err := f.Do(context.Background(), "k", fn)
		if err != nil || !shared {
			t.Errorf("second caller: shared=%v err=%v", shared, err)
		}
		got <- v
	}()
	for {
		f.mu.Lock()
		n := f.calls["k"].waiters
		f.mu.Unlock()
		if n == 2 {
			break
		}
	}
	cancel1()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled caller got %v, want context.Canceled", err)
	}
	wctx := <-workCtx
	if wctx.Err() != nil {
		t.Fatal("shared work was cancelled although a caller still waits")
	}
	close(release)
	if v := <-got; v != 7 {
		t.Fatalf("second caller got %d, want 7", v)
	}
}

func TestFlightLastCallerLeavingCancelsWork(t *testing.T) {
	t.Parallel()
	var f Group[string, int]
	workCtx := make(chan context.Context, 1)
	fn := func(ctx context.Context) (int, error) {
		workCtx <- ctx
		<-ctx.Done()
		return 0, ctx.Err()
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, _, err := f.Do(ctx, "k", fn)
		errc <- err
	}()
	wctx := <-workCtx
	cancel()
	<-errc
	<-wctx.Done() // blocks forever, failing the test by timeout, if the work is not cancelled
}
