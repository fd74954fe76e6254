package dashboard

import (
	"cmp"
	"slices"
	"sync"
	"time"
)

// SinkStatus is the outcome of a sink's latest sends, as SinkSent heard them.
type SinkStatus struct {
	Name        string    `json:"name"`
	LastSuccess time.Time `json:"last_success"`
	LastError   time.Time `json:"last_error"`
	// Error is the message of the last failed send ("" when none).
	Error string `json:"error"`
}

type sinkStatuses struct {
	mu sync.Mutex
	m  map[string]*SinkStatus
}

const maxErrorBytes = 300

func (st *sinkStatuses) record(name string, at time.Time, err error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	s := st.m[name]
	if s == nil {
		return
	}
	if err == nil {
		s.LastSuccess = at.UTC()
		return
	}
	s.LastError = at.UTC()
	msg := err.Error()
	if len(msg) > maxErrorBytes {
		msg = cut(msg[:maxErrorBytes])
	}
	s.Error = msg
}

// Statuses returns the status of every watched sink, sorted by name.
func (r *Recorder) Statuses() []SinkStatus {
	r.status.mu.Lock()
	defer r.status.mu.Unlock()
	out := make([]SinkStatus, 0, len(r.status.m))
	for _, s := range r.status.m {
		out = append(out, *s)
	}
	slices.SortFunc(out, func(a, b SinkStatus) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

// Watch makes the dashboard show the send status of the named sinks (their
// cursor names), from the start, before their first send.
func (r *Recorder) Watch(names ...string) {
	r.status.mu.Lock()
	defer r.status.mu.Unlock()
	for _, name := range names {
		if r.status.m[name] == nil {
			r.status.m[name] = &SinkStatus{Name: name}
		}
	}
}

// SinkSent records the outcome of one send of the named sink, at the
// recorder's clock: the pipeline's OnSend hook. Sinks not watched (the
// dashboard itself) are not shown.
func (r *Recorder) SinkSent(name string, err error) {
	r.status.record(name, r.now(), err)
}
