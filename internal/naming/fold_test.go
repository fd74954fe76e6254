package naming

import "testing"

func TestFold(t *testing.T) {
	tests := []struct{ in, want string }{
		{"CustomerRouting", "CustomerRouting"},
		{"Größe", "Grosse"},
		{"Gestión Pagos", "Gestion Pagos"},
		{"Ærø Łódź", "AEro Lodz"},
		{"Þór", "THor"},
		{"中文 Ωmega", "中文 Ωmega"}, // no ASCII spelling: left for the sink's rule
		{"", ""},
	}
	for _, tt := range tests {
		if got := Fold(tt.in); got != tt.want {
			t.Errorf("Fold(%q): got %q, want %q", tt.in, got, tt.want)
		}
	}
}
