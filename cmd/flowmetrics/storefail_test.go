package main

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/config"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/memstore"
	"github.com/flowmetrics/flowmetrics/internal/telemetry"
)

// breakingStore is a memory store that fails the way pebblestore does when
// Pebble cannot go on: once broken, a Claim parks forever (Pebble's Fatalf
// must not return), Done is closed and Err says why.
type breakingStore struct {
	flowmetrics.Store
	once   sync.Once
	done   chan struct{}
	mu     sync.Mutex
	err    error
	parked chan struct{} // a Claim is parked
}

func (s *breakingStore) Done() <-chan struct{} { return s.done }

func (s *breakingStore) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

func (s *breakingStore) Claim(ctx context.Context, reqs []flowmetrics.ClaimRequest) ([]flowmetrics.Occurrence, error) {
	if s.Err() != nil {
		s.parked <- struct{}{}
		select {} // as a committing request in Pebble's Fatalf
	}
	return s.Store.Claim(ctx, reqs)
}

// breakDown makes the next Claims park, as the one Pebble's failure caught
// does; Done is closed only later, as Pebble records the failure after the
// committing request entered it.
func (s *breakingStore) breakDown(err error) {
	s.mu.Lock()
	s.err = err
	s.mu.Unlock()
}

func (s *breakingStore) reportFailure() { s.once.Do(func() { close(s.done) }) }

// TestStoreFailureEndsServe: a store failure that cannot be survived ends
// serve at once with an error naming it (main turns it into exit status 1),
// even with a request parked inside the store and a long shutdown_timeout,
// and the parked request is never acknowledged.
func TestStoreFailureEndsServe(t *testing.T) {
	addr := freeAddr(t)
	cfg := config.Default()
	cfg.Store.Type = "memory"
	cfg.HTTP.Listen = addr
	cfg.HTTP.ShutdownTimeout = time.Minute
	st := &breakingStore{Store: memstore.New(store.Options{}), done: make(chan struct{}), parked: make(chan struct{}, 1)}
	done := make(chan error, 1)
	go func() {
		done <- serveStore(context.Background(), service{cfg: cfg, m: telemetry.New(), st: st, log: slog.New(slog.DiscardHandler)})
	}()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if code, _ := healthz(addr); code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("serve did not come up")
		}
	}
	st.breakDown(errors.New("pebblestore: fatal commit error: write 000002.log: no space left on device"))
	posted := make(chan int, 1)
	go func() {
		resp, err := http.Post("http://"+addr+"/v1/events", "application/x-ndjson", strings.NewReader(occurrenceEvent(1)))
		if err != nil {
			posted <- 0
			return
		}
		resp.Body.Close()
		posted <- resp.StatusCode
	}()
	select {
	case <-st.parked:
	case <-time.After(5 * time.Second):
		t.Fatal("the request did not reach the store")
	}
	st.reportFailure()
	start := time.Now()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "store failed") || !strings.Contains(err.Error(), "no space left") {
			t.Errorf("got %v, want an error naming the store failure", err)
		}
		t.Logf("serve ended %v after the failure: %v", time.Since(start).Round(time.Millisecond), err)
	case <-time.After(5 * time.Second):
		t.Fatal("serve still running 5 s after the store failed")
	}
	select {
	case code := <-posted:
		if code/100 == 2 {
			t.Errorf("a request to the failed store got %d, want no acknowledgement", code)
		}
	case <-time.After(5 * time.Second):
	}
}

// TestOrStoreFailure: replay's work parked inside a failed store ends with
// the failure instead of hanging.
func TestOrStoreFailure(t *testing.T) {
	st := &breakingStore{Store: memstore.New(store.Options{}), done: make(chan struct{}), parked: make(chan struct{}, 1)}
	if err := orStoreFailure(st, func() error { return nil }); err != nil {
		t.Errorf("healthy store: got %v, want fn's nil", err)
	}
	st.breakDown(errors.New("pebblestore: fatal commit error"))
	go func() { <-st.parked; st.reportFailure() }()
	done := make(chan error, 1)
	go func() {
		done <- orStoreFailure(st, func() error {
			_, err := st.Claim(context.Background(), []flowmetrics.ClaimRequest{{ConversationID: "c", Occurrences: []flowmetrics.Occurrence{{Key: "k"}}}})
			return err
		})
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "store failed: pebblestore: fatal commit error") {
			t.Errorf("got %v, want the store failure", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("orStoreFailure hangs with fn parked in a failed store")
	}
}
