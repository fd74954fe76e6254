package prometheus

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/naming"
	"github.com/flowmetrics/flowmetrics/internal/sink"
	"github.com/flowmetrics/flowmetrics/internal/telemetry"
)

func TestCounterExposition(t *testing.T) {
	m := telemetry.New()
	reg := m.Registry
	s, err := New(Config{}, sink.Deps{Namer: naming.New(naming.Config{Tags: map[string]string{"env": "prod", "team-name": "cx"}}), Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	b := time.Date(2023, 3, 5, 8, 18, 0, 0, time.UTC)
	s.Send(context.Background(), []flowmetrics.Point{
		{Flow: "CustomerRouting", Metric: "Unknown", Bucket: b, Count: 2},
		{Flow: "Billing Main", Metric: "PaymentTaken", Bucket: b, Count: 1},
	})
	s.Send(context.Background(), []flowmetrics.Point{{Flow: "CustomerRouting", Metric: "Unknown", Bucket: b.Add(time.Hour), Count: 3}})
	want := `
# HELP genesys_flow_metric_total Occurrences of Genesys Cloud flow metrics, counted once per conversation.
# TYPE genesys_flow_metric_total counter
genesys_flow_metric_total{env="prod",flow="Billing Main",metric="PaymentTaken",team_name="cx"} 1
genesys_flow_metric_total{env="prod",flow="CustomerRouting",metric="Unknown",team_name="cx"} 5
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "genesys_flow_metric_total"); err != nil {
		t.Error(err)
	}
}

func TestValidate(t *testing.T) {
	if err := (Config{Name: "bad-name"}).Validate(); err == nil {
		t.Error("got nil error for name bad-name, want one")
	}
	if err := (Config{Name: "ivr_total"}).Validate(); err != nil {
		t.Errorf("got %v for a valid name, want nil", err)
	}
}
