// Package boards_test checks the generated Datadog dashboard and monitors
// against Datadog's official API model (datadog-api-client-go), in a module
// of its own so the main module does not depend on the client.
package boards_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/DataDog/datadog-api-client-go/v2/api/datadogV1"

	"github.com/flowmetrics/flowmetrics/internal/boards"
	"github.com/flowmetrics/flowmetrics/internal/naming"
)

// unknown walks a decoded model and returns the paths where the client kept
// something it did not recognise: AdditionalProperties (a field the model
// does not have) or UnparsedObject (a value that fits none of the types a
// field may hold, or an object missing a required field).
func unknown(v reflect.Value, path string) []string {
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if v.IsNil() {
			return nil
		}
		return unknown(v.Elem(), path)
	case reflect.Slice, reflect.Array:
		var out []string
		for i := 0; i < v.Len(); i++ {
			out = append(out, unknown(v.Index(i), fmt.Sprintf("%s[%d]", path, i))...)
		}
		return out
	case reflect.Struct:
		var out []string
		for i := 0; i < v.NumField(); i++ {
			f := v.Type().Field(i)
			if !f.IsExported() {
				continue
			}
			fv := v.Field(i)
			switch f.Name {
			case "AdditionalProperties":
				if fv.Len() > 0 {
					out = append(out, fmt.Sprintf("%s: unknown fields %v", path, fv.MapKeys()))
				}
				continue
			case "UnparsedObject":
				if !fv.IsNil() && (fv.Kind() != reflect.Map || fv.Len() > 0) {
					out = append(out, fmt.Sprintf("%s: not a valid %s: %v", path, v.Type().Name(), fv.Interface()))
				}
				continue
			}
			out = append(out, unknown(fv, path+"."+f.Name)...)
		}
		return out
	}
	return nil
}

// problems decodes data into model and returns what does not fit: the
// paths the client did not recognise, and any difference between data and
// the model encoded back (a field dropped or changed). None means every
// field we send is one the API model has, with the type it expects.
func problems(data []byte, model any) []string {
	if err := json.Unmarshal(data, model); err != nil {
		return []string{err.Error()}
	}
	out := unknown(reflect.ValueOf(model), "")
	again, err := json.Marshal(model)
	if err != nil {
		return append(out, "re-encoding: "+err.Error())
	}
	var want, got any
	json.Unmarshal(data, &want)
	json.Unmarshal(again, &got)
	if !reflect.DeepEqual(want, got) {
		out = append(out, fmt.Sprintf("the API model does not keep what we wrote:\nwrote %s\nmodel %s", compact(data), again))
	}
	return out
}

func roundTrip(t *testing.T, name string, data []byte, model any) {
	t.Helper()
	for _, p := range problems(data, model) {
		t.Errorf("%s: %s", name, p)
	}
}

// TestTheCheckCatchesMistakes: the check is strict enough to fail on an
// unknown field, an unknown widget type or monitor type, and a wrong type.
func TestTheCheckCatchesMistakes(t *testing.T) {
	files, err := boards.Generate(boards.Options{})
	if err != nil {
		t.Fatal(err)
	}
	dash, mons := string(files[0].Data), string(files[1].Data)
	var monitors []json.RawMessage
	json.Unmarshal([]byte(mons), &monitors)
	mon := string(monitors[0])
	tests := []struct {
		name  string
		data  string
		model any
	}{
		{"unknown dashboard field", strings.Replace(dash, `"layout_type"`, `"layuot_type": "ordered", "layout_type"`, 1), &datadogV1.Dashboard{}},
		{"unknown widget field", strings.Replace(dash, `"show_legend"`, `"show_legends": true, "show_legend"`, 1), &datadogV1.Dashboard{}},
		{"unknown widget type", strings.Replace(dash, `"type": "toplist"`, `"type": "toplists"`, 1), &datadogV1.Dashboard{}},
		{"wrong value type", strings.Replace(dash, `"show_legend": true`, `"show_legend": "yes"`, 1), &datadogV1.Dashboard{}},
		{"unknown monitor type", strings.Replace(mon, `"query alert"`, `"query-alert"`, 1), &datadogV1.Monitor{}},
		{"unknown monitor option", strings.Replace(mon, `"include_tags"`, `"include_tag": true, "include_tags"`, 1), &datadogV1.Monitor{}},
	}
	for _, tt := range tests {
		if tt.data == dash || tt.data == mon {
			t.Fatalf("%s: the mutation did not apply", tt.name)
		}
		if p := problems([]byte(tt.data), tt.model); len(p) == 0 {
			t.Errorf("%s: the check found nothing wrong", tt.name)
		}
	}
}

func compact(b []byte) string {
	var v any
	json.Unmarshal(b, &v)
	out, _ := json.Marshal(v)
	return string(out)
}

func checkDatadog(t *testing.T, name string, dashboard, monitors []byte) {
	t.Helper()
	var d datadogV1.Dashboard
	roundTrip(t, name+" dashboard", dashboard, &d)
	if d.Title == "" || d.LayoutType != datadogV1.DASHBOARDLAYOUTTYPE_ORDERED || len(d.Widgets) < 4 {
		t.Errorf("%s dashboard: title %q, layout %q, %d widgets", name, d.Title, d.LayoutType, len(d.Widgets))
	}
	for i, w := range d.Widgets {
		if w.Definition.GetActualInstance() == nil {
			t.Errorf("%s dashboard: widget %d has no definition the API knows", name, i)
		}
	}
	var raw []json.RawMessage
	if err := json.Unmarshal(monitors, &raw); err != nil {
		t.Fatalf("%s monitors: %v", name, err)
	}
	if len(raw) < 3 {
		t.Errorf("%s monitors: %d, want the spike, silent and malformed ones", name, len(raw))
	}
	composites := 0
	for i, r := range raw {
		var m datadogV1.Monitor
		roundTrip(t, fmt.Sprintf("%s monitor %d", name, i), r, &m)
		if m.Type == datadogV1.MONITORTYPE_COMPOSITE {
			// The spike alert: both monitors it names (MONITOR_<i>, element
			// i of the array, replaced by its id on import) come before it
			// and are query alerts on the same groups.
			composites++
			var a, b int
			if n, _ := fmt.Sscanf(m.Query, "MONITOR_%d && MONITOR_%d", &a, &b); n != 2 || a >= i || b >= i || a == b {
				t.Errorf("%s monitor %d: composite query %q, want MONITOR_<i> && MONITOR_<j> naming two monitors before it", name, i, m.Query)
				continue
			}
			var ma, mb datadogV1.Monitor
			json.Unmarshal(raw[a], &ma)
			json.Unmarshal(raw[b], &mb)
			group := " by {flow,metric}"
			if ma.Type != datadogV1.MONITORTYPE_QUERY_ALERT || mb.Type != datadogV1.MONITORTYPE_QUERY_ALERT || !strings.Contains(ma.Query, group) || !strings.Contains(mb.Query, group) {
				t.Errorf("%s monitor %d: composite of %q and %q, want two query alerts grouped%s", name, i, ma.Query, mb.Query, group)
			}
			continue
		}
		if m.Type != datadogV1.MONITORTYPE_QUERY_ALERT || m.Query == "" || m.Options == nil || m.Options.Thresholds == nil || m.Options.Thresholds.Critical == nil {
			t.Errorf("%s monitor %d: type %q, query %q, options %+v", name, i, m.Type, m.Query, m.Options)
			continue
		}
		// A query alert's threshold is in its query too, and must agree.
		if want := fmt.Sprintf(" %g", *m.Options.Thresholds.Critical); !strings.HasSuffix(m.Query, want) {
			t.Errorf("%s monitor %d: query %q does not end with its critical threshold%s", name, i, m.Query, want)
		}
	}
	if composites == 0 {
		t.Errorf("%s monitors: no composite spike alert", name)
	}
}

// TestCommittedBoardsFitTheDatadogAPI checks the examples under deploy/boards.
func TestCommittedBoardsFitTheDatadogAPI(t *testing.T) {
	dirs, _ := filepath.Glob("../../deploy/boards/*/datadog-dashboard.json")
	if len(dirs) == 0 {
		t.Fatal("no boards under deploy/boards")
	}
	for _, path := range dirs {
		dir := filepath.Dir(path)
		dash, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		mons, err := os.ReadFile(filepath.Join(dir, boards.DatadogMonitors))
		if err != nil {
			t.Fatal(err)
		}
		checkDatadog(t, filepath.Base(dir), dash, mons)
	}
}

// TestGeneratedBoardsFitTheDatadogAPI checks boards for other naming
// configs: custom name, tags that need sanitising, a spike target.
func TestGeneratedBoardsFitTheDatadogAPI(t *testing.T) {
	for name, o := range map[string]boards.Options{
		"custom name":   {Naming: naming.Config{Name: "cx.flows", Tags: map[string]string{"Team Name": "Après-vente"}}},
		"spike":         {Spike: &boards.FlowMetric{Flow: "Billing Main", Metric: "PaymentFailed"}},
		"flow template": {Naming: naming.Config{Template: "genesys.{flow}"}, Metrics: []boards.FlowMetric{{Flow: "A", Metric: "x"}, {Flow: "B", Metric: "y"}}},
	} {
		files, err := boards.Generate(o)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got := map[string][]byte{}
		for _, f := range files {
			got[f.Name] = f.Data
		}
		checkDatadog(t, name, got[boards.DatadogDashboard], got[boards.DatadogMonitors])
	}
}
