package deploy_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/awslabs/goformation/v7"
	"github.com/awslabs/goformation/v7/cloudformation"
	"github.com/awslabs/goformation/v7/intrinsics"
	"gopkg.in/yaml.v3"

	"github.com/flowmetrics/flowmetrics/internal/lambdafn"
)

// refs records what the template's intrinsic functions point at. The
// handlers replace each function with a readable marker, so the typed
// template shows where a value comes from ("getatt:StateTable.Arn").
type refs struct {
	ref, getAtt, conds []string
}

// templatePath is deploy/aws/template.yaml, from this module's directory.
var templatePath = filepath.Join("..", "..", "deploy", "aws", "template.yaml")

var subVar = regexp.MustCompile(`\$\{([^}!]+)\}`)

func parse(t *testing.T) (*cloudformation.Template, *refs) {
	t.Helper()
	data, err := os.ReadFile(templatePath)
	if err != nil {
		t.Fatal(err)
	}
	r := &refs{}
	handlers := map[string]intrinsics.IntrinsicHandler{
		"Ref": func(_ string, in, tmpl interface{}) interface{} {
			s, _ := in.(string)
			r.ref = append(r.ref, s)
			// A Number parameter stands for its default, so typed
			// properties still parse.
			if p := param(tmpl, s); p["Type"] == "Number" {
				return p["Default"]
			}
			return "ref:" + s
		},
		"Fn::GetAtt": func(_ string, in, _ interface{}) interface{} {
			var parts []string
			switch v := in.(type) {
			case string:
				parts = strings.SplitN(v, ".", 2)
			case []interface{}:
				for _, p := range v {
					parts = append(parts, fmt.Sprint(p))
				}
			}
			s := strings.Join(parts, ".")
			r.getAtt = append(r.getAtt, s)
			return "getatt:" + s
		},
		"Fn::Sub": func(_ string, in, _ interface{}) interface{} {
			var s string
			switch v := in.(type) {
			case string:
				s = v
			case []interface{}:
				s, _ = v[0].(string)
			}
			for _, m := range subVar.FindAllStringSubmatch(s, -1) {
				name, attr, ok := strings.Cut(m[1], ".")
				if ok {
					r.getAtt = append(r.getAtt, name+"."+attr)
				} else {
					r.ref = append(r.ref, name)
				}
			}
			return s
		},
		// Both branches were already recorded; keep the first so the typed
		// template holds the fullest value (e.g. the optional statement).
		// A branch that is AWS::NoValue gives way to the other, so typed
		// properties see a value of their type.
		"Fn::If": func(_ string, in, _ interface{}) interface{} {
			v, _ := in.([]interface{})
			if len(v) != 3 {
				return nil
			}
			r.conds = append(r.conds, fmt.Sprint(v[0]))
			if v[1] == "ref:AWS::NoValue" {
				return v[2]
			}
			return v[1]
		},
	}
	tmpl, err := goformation.ParseYAMLWithOptions(data, &intrinsics.ProcessorOptions{IntrinsicHandlerOverrides: handlers})
	if err != nil {
		t.Fatalf("parse %s: %v", templatePath, err)
	}
	return tmpl, r
}

func param(tmpl interface{}, name string) map[string]interface{} {
	t, _ := tmpl.(map[string]interface{})
	ps, _ := t["Parameters"].(map[string]interface{})
	p, _ := ps[name].(map[string]interface{})
	return p
}

var pseudo = map[string]bool{
	"AWS::AccountId": true, "AWS::NoValue": true, "AWS::Partition": true, "AWS::Region": true,
	"AWS::StackId": true, "AWS::StackName": true, "AWS::URLSuffix": true, "AWS::NotificationARNs": true,
}

func TestReferencesResolve(t *testing.T) {
	tmpl, r := parse(t)
	if len(r.ref) == 0 || len(r.getAtt) == 0 {
		t.Fatalf("recorded %d Refs and %d GetAtts, want some of each", len(r.ref), len(r.getAtt))
	}
	for _, name := range r.ref {
		_, isParam := tmpl.Parameters[name]
		_, isRes := tmpl.Resources[name]
		if !isParam && !isRes && !pseudo[name] {
			t.Errorf("Ref %q: no such parameter, resource or pseudo parameter", name)
		}
	}
	attrs := map[string][]string{
		"AWS::DynamoDB::Table":  {"Arn", "StreamArn"},
		"AWS::SQS::Queue":       {"Arn", "QueueName", "QueueUrl"},
		"AWS::Events::Rule":     {"Arn"},
		"AWS::IAM::Role":        {"Arn", "RoleId"},
		"AWS::Logs::LogGroup":   {"Arn"},
		"AWS::Lambda::Function": {"Arn"},
	}
	for _, ga := range r.getAtt {
		name, attr, _ := strings.Cut(ga, ".")
		res, ok := tmpl.Resources[name]
		if !ok {
			t.Errorf("GetAtt %s: no resource %s", ga, name)
			continue
		}
		typ := res.AWSCloudFormationType()
		if typ == "AWS::Serverless::Function" {
			typ = "AWS::Lambda::Function"
		}
		known, listed := attrs[typ]
		if listed && !contains(known, attr) {
			t.Errorf("GetAtt %s: %s has no attribute %s (want one of %v)", ga, typ, attr, known)
		}
	}
	for _, c := range r.conds {
		if _, ok := tmpl.Conditions[c]; !ok {
			t.Errorf("Fn::If condition %q is not defined", c)
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// TestLeastPrivilege: the function's role may touch only the state table,
// the event queue, its own log group and the Datadog secret, with only the
// actions the code uses.
func TestLeastPrivilege(t *testing.T) {
	tmpl, _ := parse(t)
	roles := tmpl.GetAllIAMRoleResources()
	if len(roles) != 1 {
		t.Fatalf("got %d IAM roles, want 1", len(roles))
	}
	allowed := map[string][]string{
		"getatt:StateTable.Arn":       {"dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:BatchGetItem"},
		"getatt:EventQueue.Arn":       {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"},
		"getatt:FunctionLogGroup.Arn": {"logs:CreateLogStream", "logs:PutLogEvents"},
		"ref:DatadogApiKeySecretArn":  {"secretsmanager:GetSecretValue"},
	}
	seen := map[string]bool{}
	for _, role := range roles {
		if len(role.ManagedPolicyArns) > 0 {
			t.Errorf("role has managed policies %v, want none", role.ManagedPolicyArns)
		}
		for _, p := range role.Policies {
			doc, _ := p.PolicyDocument.(map[string]interface{})
			stmts, _ := doc["Statement"].([]interface{})
			for _, s := range stmts {
				st, _ := s.(map[string]interface{})
				if st["Effect"] != "Allow" {
					continue
				}
				for _, res := range strs(st["Resource"]) {
					acts, ok := allowed[res]
					if !ok {
						t.Errorf("statement %v: resource %q is not the table, the queue, the log group or the secret", st["Sid"], res)
						continue
					}
					seen[res] = true
					for _, a := range strs(st["Action"]) {
						if !contains(acts, a) {
							t.Errorf("statement %v: action %s on %s is not needed (allowed: %v)", st["Sid"], a, res, acts)
						}
					}
				}
			}
		}
	}
	for res := range allowed {
		if !seen[res] {
			t.Errorf("no statement grants access to %s, which the function needs", res)
		}
	}
	fn, err := tmpl.GetServerlessFunctionWithName("Function")
	if err != nil {
		t.Fatal(err)
	}
	if fn.Role == nil || *fn.Role != "getatt:FunctionRole.Arn" {
		t.Errorf("function role: got %v, want the template's role (SAM's generated one would add managed policies)", fn.Role)
	}
	if fn.Policies != nil || len(fn.Events) != 0 {
		t.Errorf("function has SAM policies or events (%v, %v): they attach broad managed policies", fn.Policies, fn.Events)
	}
}

func strs(v interface{}) []string {
	switch v := v.(type) {
	case string:
		return []string{v}
	case []interface{}:
		var out []string
		for _, x := range v {
			out = append(out, fmt.Sprint(x))
		}
		sort.Strings(out)
		return out
	}
	return nil
}

func TestShape(t *testing.T) {
	tmpl, _ := parse(t)
	fn, err := tmpl.GetServerlessFunctionWithName("Function")
	if err != nil {
		t.Fatal(err)
	}
	if fn.Runtime == nil || *fn.Runtime != "provided.al2023" || fn.Handler == nil || *fn.Handler != "bootstrap" ||
		fmt.Sprint(fn.Architectures) != "[arm64]" {
		t.Errorf("function: got runtime %v handler %v architectures %v, want provided.al2023, bootstrap, [arm64]", fn.Runtime, fn.Handler, fn.Architectures)
	}
	env := fn.Environment.Variables
	if env["FLOWMETRICS_TABLE"] != "ref:StateTable" || env["FLOWMETRICS_SINK"] != "ref:Sink" || env["DD_API_KEY_SECRET_ARN"] != "ref:DatadogApiKeySecretArn" {
		t.Errorf("function environment: got %v", env)
	}

	table, err := tmpl.GetDynamoDBTableWithName("StateTable")
	if err != nil {
		t.Fatal(err)
	}
	if table.BillingMode == nil || *table.BillingMode != "PAY_PER_REQUEST" {
		t.Errorf("table billing: got %v, want PAY_PER_REQUEST", table.BillingMode)
	}
	if ttl := table.TimeToLiveSpecification; ttl == nil || !ttl.Enabled || ttl.AttributeName == nil || *ttl.AttributeName != "ttl" {
		t.Errorf("table TTL: got %+v, want enabled on ttl", ttl)
	}
	if len(table.KeySchema) != 1 || table.KeySchema[0].AttributeName != "id" {
		t.Errorf("table key: got %+v, want id", table.KeySchema)
	}

	rule, err := tmpl.GetEventsRuleWithName("AttributesRule")
	if err != nil {
		t.Fatal(err)
	}
	if rule.EventBusName == nil || *rule.EventBusName != "ref:PartnerEventBusName" {
		t.Errorf("rule bus: got %v, want the partner bus parameter", rule.EventBusName)
	}
	pattern, _ := rule.EventPattern.(map[string]interface{})
	if got := strs(pattern["detail-type"]); fmt.Sprint(got) != "[v2.detail.events.conversation.{id}.attributes]" {
		t.Errorf("rule detail-type: got %v", got)
	}
	if len(rule.Targets) != 1 || rule.Targets[0].Arn != "getatt:EventQueue.Arn" || rule.Targets[0].DeadLetterConfig == nil ||
		rule.Targets[0].DeadLetterConfig.Arn == nil || *rule.Targets[0].DeadLetterConfig.Arn != "getatt:RuleDeadLetterQueue.Arn" {
		t.Errorf("rule targets: got %+v, want the queue with a (standard) dead-letter queue of its own", rule.Targets)
	}

	q, err := tmpl.GetSQSQueueWithName("EventQueue")
	if err != nil {
		t.Fatal(err)
	}
	redrive, _ := q.RedrivePolicy.(map[string]interface{})
	if redrive["deadLetterTargetArn"] != "getatt:DeadLetterQueue.Arn" {
		t.Errorf("queue redrive: got %v", q.RedrivePolicy)
	}
	// A failed batch must come back only after its claims' lease (40 s),
	// the function timeout and the cache TTL (15 s) have passed.
	if q.VisibilityTimeout == nil || *q.VisibilityTimeout < 40+*fn.Timeout+15 {
		t.Errorf("visibility timeout %v: want at least lease + function timeout + cache TTL", q.VisibilityTimeout)
	}

	esm, err := tmpl.GetLambdaEventSourceMappingWithName("EventSource")
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(esm.FunctionResponseTypes) != "[ReportBatchItemFailures]" || esm.EventSourceArn == nil || *esm.EventSourceArn != "getatt:EventQueue.Arn" {
		t.Errorf("event source: got %v on %v, want ReportBatchItemFailures on the queue", esm.FunctionResponseTypes, esm.EventSourceArn)
	}

	alarms := map[string]string{}
	for name, a := range tmpl.GetAllCloudWatchAlarmResources() {
		if a.MetricName != nil {
			alarms[*a.MetricName] = name
		}
	}
	for _, m := range []string{"ApproximateNumberOfMessagesVisible", "ApproximateAgeOfOldestMessage", "RecordsFailed"} {
		if alarms[m] == "" {
			t.Errorf("no alarm on %s", m)
		}
	}
}

// raw returns the template as plain data, each short-form intrinsic
// (!Ref x, !If [...]) written out as its long form ({"Ref": x}, {"Fn::If":
// [...]}), so the tests can see what a value depends on.
func raw(t *testing.T) map[string]interface{} {
	t.Helper()
	data, err := os.ReadFile(templatePath)
	if err != nil {
		t.Fatal(err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	out, _ := plain(t, doc.Content[0]).(map[string]interface{})
	return out
}

func plain(t *testing.T, n *yaml.Node) interface{} {
	var v interface{}
	switch n.Kind {
	case yaml.MappingNode:
		m := map[string]interface{}{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			m[n.Content[i].Value] = plain(t, n.Content[i+1])
		}
		v = m
	case yaml.SequenceNode:
		l := []interface{}{}
		for _, c := range n.Content {
			l = append(l, plain(t, c))
		}
		v = l
	case yaml.ScalarNode:
		if err := n.Decode(&v); err != nil {
			v = n.Value // a tagged scalar: its text
		}
	case yaml.AliasNode:
		v = plain(t, n.Alias)
	}
	if tag := n.Tag; strings.HasPrefix(tag, "!") && !strings.HasPrefix(tag, "!!") {
		name := strings.TrimPrefix(tag, "!")
		switch name {
		case "Ref", "Condition":
		case "GetAtt":
			if s, ok := v.(string); ok {
				a, b, _ := strings.Cut(s, ".")
				v = []interface{}{a, b}
			}
			name = "Fn::GetAtt"
		default:
			name = "Fn::" + name
		}
		return map[string]interface{}{name: v}
	}
	return v
}

func at(v interface{}, path ...string) interface{} {
	for _, p := range path {
		m, _ := v.(map[string]interface{})
		v = m[p]
	}
	return v
}

func jsonOf(t *testing.T, v interface{}) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestNoThrottlingAndNames: nothing caps the function's concurrency (a
// throttled SQS batch counts towards maxReceiveCount), and its name fits
// Lambda's 64 characters whatever the stack is called.
func TestNoThrottlingAndNames(t *testing.T) {
	tmpl, _ := parse(t)
	fn, err := tmpl.GetServerlessFunctionWithName("Function")
	if err != nil {
		t.Fatal(err)
	}
	if fn.ReservedConcurrentExecutions != nil {
		t.Errorf("ReservedConcurrentExecutions: got %v, want none", *fn.ReservedConcurrentExecutions)
	}
	r := raw(t)
	name := jsonOf(t, at(r, "Resources", "Function", "Properties", "FunctionName"))
	logGroup := jsonOf(t, at(r, "Resources", "FunctionLogGroup", "Properties", "LogGroupName"))
	for what, v := range map[string]string{"function name": name, "log group name": logGroup} {
		if strings.Contains(v, "AWS::StackName") || !strings.Contains(v, "AWS::StackId") {
			t.Errorf("%s %s: want it built from the stack id (a UUID), not the stack name", what, v)
		}
	}
	// "flowmetrics-" and a 36-character UUID.
	if n := len("flowmetrics-") + 36; n > 64 {
		t.Errorf("function name of %d characters, want ≤ 64", n)
	}
	if !strings.Contains(logGroup, `/aws/lambda/flowmetrics-`) {
		t.Errorf("log group %s: want /aws/lambda/ + the function name, where Lambda writes", logGroup)
	}
}

// TestSingleWriterArrangement: count mode (one writer) switches the queue,
// its dead-letter queue, the rule target and the event source to FIFO with
// one message group together; distribution mode keeps the standard queue
// with a batching window.
func TestSingleWriterArrangement(t *testing.T) {
	tmpl, _ := parse(t)
	if got := jsonOf(t, at(raw(t), "Conditions", "SingleWriter")); !strings.Contains(got, `{"Ref":"DatadogMode"},"count"`) {
		t.Errorf("condition SingleWriter: got %s, want it to hold for DatadogMode count", got)
	}
	if p := param(raw(t), "DatadogMode"); p["Default"] != "distribution" {
		t.Errorf("DatadogMode default: got %v, want distribution (exact with any concurrency)", p["Default"])
	}
	r := raw(t)
	for _, path := range [][]string{
		{"Resources", "EventQueue", "Properties", "FifoQueue"},
		{"Resources", "EventQueue", "Properties", "ContentBasedDeduplication"},
		{"Resources", "DeadLetterQueue", "Properties", "FifoQueue"},
		{"Resources", "EventSource", "Properties", "BatchSize"},
		{"Resources", "EventSource", "Properties", "MaximumBatchingWindowInSeconds"},
	} {
		if got := jsonOf(t, at(r, path...)); !strings.HasPrefix(got, `{"Fn::If":["SingleWriter",`) {
			t.Errorf("%s: got %s, want it to follow SingleWriter", strings.Join(path, "."), got)
		}
	}
	targets, _ := at(r, "Resources", "AttributesRule", "Properties", "Targets").([]interface{})
	if len(targets) != 1 || !strings.Contains(jsonOf(t, targets[0]), `"SqsParameters":{"Fn::If":["SingleWriter",{"MessageGroupId":`) {
		t.Errorf("rule target: got %s, want a message group id under SingleWriter", jsonOf(t, targets))
	}
	if got := jsonOf(t, at(r, "Resources", "EventSource", "Properties", "MaximumBatchingWindowInSeconds")); !strings.Contains(got, `{"Ref":"BatchingWindow"}`) {
		t.Errorf("batching window: got %s, want the BatchingWindow parameter on the standard queue", got)
	}
	fn, _ := tmpl.GetServerlessFunctionWithName("Function")
	if env := fn.Environment.Variables; env["FLOWMETRICS_DATADOG_MODE"] != "ref:DatadogMode" {
		t.Errorf("FLOWMETRICS_DATADOG_MODE: got %v, want the DatadogMode parameter", env["FLOWMETRICS_DATADOG_MODE"])
	}
}

// TestFailedRecordsAlarm: an alarm watches the records the function fails,
// from the metric the function writes (lambdafn's EMF report), not only the
// queue's backlog.
func TestFailedRecordsAlarm(t *testing.T) {
	tmpl, _ := parse(t)
	var found bool
	for name, a := range tmpl.GetAllCloudWatchAlarmResources() {
		if a.MetricName == nil || *a.MetricName != "RecordsFailed" {
			continue
		}
		found = true
		if a.Namespace == nil || *a.Namespace != lambdafn.ReportNamespace {
			t.Errorf("%s: namespace %v, want %s (what the function writes)", name, a.Namespace, lambdafn.ReportNamespace)
		}
		if len(a.Dimensions) != 1 || a.Dimensions[0].Name != "FunctionName" || a.Dimensions[0].Value != "ref:Function" {
			t.Errorf("%s: dimensions %+v, want FunctionName of the function", name, a.Dimensions)
		}
		if a.Threshold == nil || *a.Threshold != 0 || a.ComparisonOperator != "GreaterThanThreshold" {
			t.Errorf("%s: want any failed record to count", name)
		}
	}
	if !found {
		t.Error("no alarm on RecordsFailed")
	}
}

// TestRules: a stack whose Datadog sink lacks its secret, or whose
// dogstatsd sink lacks the extension layer or is in count mode (the
// extension sums counts), is refused.
func TestRules(t *testing.T) {
	r := raw(t)
	rules, _ := r["Rules"].(map[string]interface{})
	cases := []struct{ sinks, needs string }{
		{`"emf"`, "DatadogApiKeySecretArn"},
		{`"dogstatsd"`, "DatadogExtensionLayerArn"},
	}
	for _, c := range cases {
		ok := false
		for _, rule := range rules {
			cond := jsonOf(t, at(rule, "RuleCondition"))
			asserts := jsonOf(t, at(rule, "Assertions"))
			if strings.Contains(cond, c.sinks) && strings.Contains(asserts, `{"Ref":"`+c.needs+`"}`) && strings.Contains(asserts, `"Fn::Not"`) {
				ok = true
			}
		}
		if !ok {
			t.Errorf("no rule on Sink %s asserting %s is set (rules: %s)", c.sinks, c.needs, jsonOf(t, rules))
		}
	}
	ok := false
	for _, rule := range rules {
		cond := jsonOf(t, at(rule, "RuleCondition"))
		asserts := jsonOf(t, at(rule, "Assertions"))
		if strings.Contains(cond, `"dogstatsd"`) && strings.Contains(cond, `"emf,dogstatsd"`) && strings.Contains(asserts, `"Fn::Equals":[{"Ref":"DatadogMode"},"distribution"]`) {
			ok = true
		}
	}
	if !ok {
		t.Errorf("no rule on the dogstatsd sinks asserting DatadogMode distribution (rules: %s)", jsonOf(t, rules))
	}
	if len(rules) != 3 {
		t.Errorf("got %d rules, want 3", len(rules))
	}
}
