package httpapi

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/flowmetrics/flowmetrics/internal/corpus"
	"github.com/flowmetrics/flowmetrics/internal/genesys"
	"github.com/flowmetrics/flowmetrics/internal/pipeline"
	"github.com/flowmetrics/flowmetrics/internal/telemetry"
)

// acceptAll is an Ingester that accepts every record and claims nothing,
// so that a benchmark measures the handler alone.
type acceptAll struct{}

func (acceptAll) Ingest(_ context.Context, recs []genesys.Record) (pipeline.Result, error) {
	return pipeline.Result{Read: len(recs), Accepted: len(recs)}, nil
}

// BenchmarkEvents is the handler's own cost for a request of 100 archive
// events (NDJSON, as an EventBridge API destination or the archive
// benchmark posts them): reading, decoding and answering, without a
// pipeline behind it.
func BenchmarkEvents(b *testing.B) {
	var archive bytes.Buffer
	if _, err := corpus.WriteArchive(&archive, corpus.ArchiveOptions{Conversations: 200, Seed: 17}); err != nil {
		b.Fatal(err)
	}
	lines := bytes.SplitAfter(archive.Bytes(), []byte("\n"))
	body := bytes.Join(lines[:100], nil)
	h := New(acceptAll{}, telemetry.New(), Options{}, nil)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		req := httptest.NewRequest(http.MethodPost, "http://127.0.0.1/v1/events", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/x-ndjson")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != http.StatusAccepted {
			b.Fatalf("got %d: %s", w.Code, w.Body)
		}
	}
}
