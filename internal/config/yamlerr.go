package config

import (
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// checkNode walks a YAML document against the Go type it will decode into
// and reports every unknown key and every value of the wrong type by its
// YAML path (pipeline.flush_interval), with the nearest valid key as a
// suggestion, instead of yaml.v3's Go type names ("field flush_intervall
// not found in type pipeline.Config"). The errors come in document order.
func checkNode(doc *yaml.Node, t reflect.Type) error {
	var errs []located
	walk(doc, t, "", &errs)
	if len(errs) == 0 {
		return nil
	}
	sort.SliceStable(errs, func(i, j int) bool { return errs[i].line < errs[j].line })
	out := make([]error, len(errs))
	for i, e := range errs {
		out[i] = e.err
	}
	return errors.Join(out...)
}

type located struct {
	line int
	err  error
}

var (
	durationType  = reflect.TypeOf(time.Duration(0))
	unmarshalType = reflect.TypeOf((*yaml.Unmarshaler)(nil)).Elem()
)

func walk(n *yaml.Node, t reflect.Type, path string, errs *[]located) {
	for n.Kind == yaml.DocumentNode && len(n.Content) == 1 {
		n = n.Content[0]
	}
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return // null leaves the default in place
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t != durationType && !reflect.PointerTo(t).Implements(unmarshalType) {
		switch t.Kind() {
		case reflect.Struct:
			if n.Kind == yaml.MappingNode {
				walkStruct(n, t, path, errs)
				return
			}
		case reflect.Map:
			if n.Kind == yaml.MappingNode {
				for i := 0; i+1 < len(n.Content); i += 2 {
					walk(n.Content[i+1], t.Elem(), join(path, n.Content[i].Value), errs)
				}
				return
			}
		case reflect.Slice:
			if n.Kind == yaml.SequenceNode {
				for i, c := range n.Content {
					walk(c, t.Elem(), fmt.Sprintf("%s[%d]", path, i), errs)
				}
				return
			}
		}
	}
	// A leaf, or a node of the wrong kind: decode it alone to see whether
	// it fits, and say so in YAML terms.
	if err := n.Decode(reflect.New(t).Interface()); err != nil {
		*errs = append(*errs, located{n.Line, fmt.Errorf("%s: %s (line %d)", orTop(path), describeValue(n, t), n.Line)})
	}
}

func walkStruct(n *yaml.Node, t reflect.Type, path string, errs *[]located) {
	fields := yamlFields(t)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Value == "<<" {
			continue // a merge key: its contents are checked where defined
		}
		f, ok := fields[k.Value]
		if !ok {
			*errs = append(*errs, located{k.Line, fmt.Errorf("%s: unknown key; %s (line %d)", join(path, k.Value), suggest(k.Value, fields), k.Line)})
			continue
		}
		walk(v, f, join(path, k.Value), errs)
	}
}

// yamlFields maps the YAML keys of a struct to their types, as yaml.v3
// names them: the tag's name, or the field name in lower case.
func yamlFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		tag := f.Tag.Get("yaml")
		if tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if strings.Contains(opts, "inline") {
			ft := f.Type
			for ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				for k, v := range yamlFields(ft) {
					out[k] = v
				}
			}
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		out[name] = f.Type
	}
	return out
}

// suggest names the valid key nearest to key, or lists the valid keys when
// none is near.
func suggest(key string, fields map[string]reflect.Type) string {
	names := make([]string, 0, len(fields))
	for k := range fields {
		names = append(names, k)
	}
	sort.Strings(names)
	best, bestD := "", -1
	for _, k := range names {
		if d := editDistance(strings.ToLower(key), k); bestD < 0 || d < bestD {
			best, bestD = k, d
		}
	}
	if best != "" && bestD <= max(2, len(key)/3) {
		return "did you mean " + best + "?"
	}
	if len(names) == 0 {
		return "this section takes no keys"
	}
	return "valid keys: " + strings.Join(names, ", ")
}

// editDistance is the Levenshtein distance between a and b, in bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func orTop(path string) string {
	if path == "" {
		return "config"
	}
	return path
}

// describeValue says, without Go type names, why the value n does not fit t.
func describeValue(n *yaml.Node, t reflect.Type) string {
	var got string
	switch n.Kind {
	case yaml.MappingNode:
		got = "a mapping"
	case yaml.SequenceNode:
		got = "a list"
	default:
		got = fmt.Sprintf("%q", n.Value)
	}
	return "got " + got + ", want " + want(t)
}

var goType = regexp.MustCompile(`[a-z]+\.[A-Z]\w*`)

func want(t reflect.Type) string {
	switch {
	case t == durationType:
		return "a duration such as 500ms, 30s, 1h or 168h"
	}
	switch t.Kind() {
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a whole number"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.String:
		return "a string"
	case reflect.Map, reflect.Struct:
		return "a mapping of keys to values"
	case reflect.Slice, reflect.Array:
		return "a list"
	}
	return "a value of another kind"
}

// plainYAMLError strips Go type names from an error yaml.v3 made, for the
// rare one checkNode did not foresee.
func plainYAMLError(err error) error {
	msg := goType.ReplaceAllStringFunc(err.Error(), func(s string) string { return "value" })
	return errors.New(strings.TrimPrefix(msg, "yaml: "))
}
