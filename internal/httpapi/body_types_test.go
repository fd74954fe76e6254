package httpapi

import (
	"strings"
	"testing"
)

// TestAcceptedTypesNamesEveryType: the 415 message lists every type the
// body reader accepts.
func TestAcceptedTypesNamesEveryType(t *testing.T) {
	for ct := range bodyTypes {
		if !strings.Contains(acceptedTypes+",", ct+",") && !strings.Contains(acceptedTypes, ct+" ") {
			t.Errorf("acceptedTypes %q does not name %s", acceptedTypes, ct)
		}
		if msg := checkType(ct); msg != "" {
			t.Errorf("checkType(%q): got %q, want accepted", ct, msg)
		}
	}
}
