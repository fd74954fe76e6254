package config

import (
	"os"
	"strings"
	"testing"
)

// TestDocumentedDefaults: the YAML that docs/CONFIGURATION.md shows as
// "all keys with their defaults" loads with the real loader (which rejects
// unknown keys and bad values), so a renamed key cannot linger on the page.
func TestDocumentedDefaults(t *testing.T) {
	page, err := os.ReadFile("../../docs/CONFIGURATION.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(page), "All keys with their defaults")
	if !ok {
		t.Fatal(`docs/CONFIGURATION.md: no "All keys with their defaults"`)
	}
	_, block, ok := strings.Cut(rest, "```yaml\n")
	block, _, ok2 := strings.Cut(block, "```")
	if !ok || !ok2 {
		t.Fatal("docs/CONFIGURATION.md: no yaml block after \"All keys with their defaults\"")
	}
	path := t.TempDir() + "/flowmetrics.yaml"
	if err := os.WriteFile(path, []byte(block), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := Load(path)
	if err != nil {
		t.Fatalf("the documented config does not load: %v", err)
	}
	if want := Default(); got.DataDir != want.DataDir || got.HTTP.Listen != want.HTTP.Listen || got.Store.Type != want.Store.Type {
		t.Errorf("the documented config: data_dir %q, http.listen %q, store.type %q; want the defaults %q, %q, %q",
			got.DataDir, got.HTTP.Listen, got.Store.Type, want.DataDir, want.HTTP.Listen, want.Store.Type)
	}
}
