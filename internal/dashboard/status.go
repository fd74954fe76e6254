package dashboard

import (
	"cmp"
	"context"
	"slices"
	"sync"
	"time"

	"github.com/flowmetrics/flowmetrics"
)

// SinkStatus is the outcome of a sink's latest sends, as Watch saw them.
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
		s = &SinkStatus{Name: name}
		st.m[name] = s
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

// Watch returns s wrapped so that the dashboard sees when its sends last
// succeeded and failed, and why. The wrapper is a flowmetrics.StatefulSink
// exactly when s is one, and a flowmetrics.Holder exactly when s is one; it
// passes everything else through unchanged.
func (r *Recorder) Watch(s flowmetrics.Sink) flowmetrics.Sink {
	r.status.mu.Lock()
	if r.status.m[s.Name()] == nil {
		r.status.m[s.Name()] = &SinkStatus{Name: s.Name()}
	}
	r.status.mu.Unlock()
	w := &watched{Sink: s, r: r}
	if ss, ok := s.(flowmetrics.StatefulSink); ok {
		ws := &watchedStateful{watched: w, ss: ss}
		if h, ok := s.(holder); ok {
			return &watchedHolder{watchedStateful: ws, h: h}
		}
		return ws
	}
	return w
}

// holder is flowmetrics.Holder's own method: a sink that holds points until a
// time passes (OTLP windows) and must be asked when they are due.
type holder interface {
	Due(now time.Time) bool
}

type watchedHolder struct {
	*watchedStateful
	h holder
}

func (w *watchedHolder) Due(now time.Time) bool { return w.h.Due(now) }

type watched struct {
	flowmetrics.Sink
	r *Recorder
}

func (w *watched) Send(ctx context.Context, points []flowmetrics.Point) error {
	err := w.Sink.Send(ctx, points)
	w.r.status.record(w.Sink.Name(), w.r.now(), err)
	return err
}

// Unwrap returns the watched sink.
func (w *watched) Unwrap() flowmetrics.Sink { return w.Sink }

type watchedStateful struct {
	*watched
	ss flowmetrics.StatefulSink
}

func (w *watchedStateful) Restore(ctx context.Context, state map[string][]byte) error {
	return w.ss.Restore(ctx, state)
}

func (w *watchedStateful) TakeState() flowmetrics.StateUpdate { return w.ss.TakeState() }
