package naming

import (
	"reflect"
	"testing"
)

func TestName(t *testing.T) {
	tests := []struct {
		name         string
		cfg          Config
		flow, metric string
		want         string
	}{
		{"default", Config{}, "CustomerRouting", "Unknown", "genesys.flow.metric"},
		{"custom single name", Config{Name: "ivr.events"}, "F", "M", "ivr.events"},
		{"template", Config{Template: "genesys.{flow}.{metric}"}, "Billing Main", "PaymentTaken", "genesys.Billing Main.PaymentTaken"},
		{"template with flow only", Config{Template: "flows.{flow}"}, "F", "M", "flows.F"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.cfg.Validate(); err != nil {
				t.Fatal(err)
			}
			if got := New(tt.cfg).Name(tt.flow, tt.metric); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestTags(t *testing.T) {
	n := New(Config{Tags: map[string]string{"team": "cx", "env": "prod"}})
	got := n.Tags("F", "M")
	want := []Tag{{"flow", "F"}, {"metric", "M"}, {"env", "prod"}, {"team", "cx"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

func TestValidate(t *testing.T) {
	bad := map[string]Config{
		"template without placeholder": {Template: "genesys.metric"},
		"unknown placeholder":          {Template: "{flow}.{org}"},
		"static flow tag":              {Tags: map[string]string{"flow": "x"}},
		"empty tag name":               {Tags: map[string]string{"": "x"}},
	}
	for name, c := range bad {
		if err := c.Validate(); err == nil {
			t.Errorf("%s: got nil error, want one", name)
		}
	}
}
