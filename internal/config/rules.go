package config

import (
	"errors"
	"fmt"
	"time"

	"github.com/flowmetrics/flowmetrics/internal/pipeline"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/dynamostore"
)

// Settings are the values that the rules between fields relate, gathered
// by each entry point from where it reads them: serve and replay from the
// YAML file, Lambda from its environment. A zero duration takes the
// default of the component that uses it.
type Settings struct {
	Retention          time.Duration
	CacheTTL           time.Duration
	CacheConversations int // negative: the cache is off
	// IdleTimeout closes a conversation path; zero when paths are off.
	IdleTimeout time.Duration

	// Lambda only: the claim lease and its margin, the function's timeout
	// (zero when unknown) and the part of it kept for answering.
	Lease, Margin   time.Duration
	FunctionTimeout time.Duration
	FlushReserve    time.Duration
}

// Names are how an entry point calls the settings, so an error names what
// the operator sets.
type Names struct {
	Retention, CacheTTL            string
	IdleTimeout                    string
	Lease, Margin, FunctionTimeout string
	FlushReserve                   string
}

// FileNames are the YAML paths of serve and replay.
var FileNames = Names{Retention: "store.retention", CacheTTL: "pipeline.cache_ttl", IdleTimeout: "paths.idle_timeout"}

// Rules checks the rules that relate settings of different components. It
// is the one place serve, replay and Lambda check them.
func Rules(s Settings, n Names) error {
	var errs []error
	// A conversation the cache still trusts must still be in the store, or
	// one past its retention would be treated as known and its new keys
	// never claimed: an undercount.
	retention := s.Retention
	if retention <= 0 {
		retention = store.DefaultRetention
	}
	ttl := s.CacheTTL
	if ttl <= 0 {
		ttl = pipeline.DefaultCacheTTL
	}
	if s.CacheConversations >= 0 && ttl >= retention {
		errs = append(errs, fmt.Errorf("%s (%v) must be shorter than %s (%v): the cache would trust conversations the store has forgotten", n.CacheTTL, ttl, n.Retention, retention))
	}
	// A path closes when its conversation has been idle that long; its
	// conversation's state (and the closed mark) must still be there, or
	// the path would never close, or close twice.
	if s.IdleTimeout > 0 && s.IdleTimeout >= retention {
		errs = append(errs, fmt.Errorf("%s (%v) must be shorter than %s (%v): a path must close before its conversation is forgotten", n.IdleTimeout, s.IdleTimeout, n.Retention, retention))
	}
	// Lambda: an outbox entry is handed to sinks only until Lease − Margin
	// after its claim (after that another instance may take the claim
	// over). Delivery may run until the function's timeout less the
	// reserve, so that must end first, or an invocation's own records
	// could be dropped unsent.
	if s.FunctionTimeout > 0 {
		lease, margin := s.Lease, s.Margin
		if lease <= 0 {
			lease = dynamostore.DefaultLease
		}
		if margin <= 0 {
			margin = dynamostore.DefaultMargin
		}
		if window := s.FunctionTimeout - s.FlushReserve; window > lease-margin {
			errs = append(errs, fmt.Errorf("%s − %s (%v) must not be longer than %s − %s (%v): a send could outlast the claim it delivers",
				n.FunctionTimeout, n.FlushReserve, window, n.Lease, n.Margin, lease-margin))
		}
	}
	return errors.Join(errs...)
}
