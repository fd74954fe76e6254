package genesys

import (
	"slices"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"
)

func utc(s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		panic(err)
	}
	return t.UTC()
}

func TestParseAttributeWellFormed(t *testing.T) {
	tests := []struct {
		name, attr   string
		flow, metric string
		time         string // RFC 3339 in UTC
	}{
		{"contract example", "CustomerRoutingMetric_Unknown(2023-03-05T08:18:04.568Z)", "CustomerRouting", "Unknown", "2023-03-05T08:18:04.568Z"},
		{"space in flow", "Billing MainMetric_PaymentTaken(2023-03-05T08:20:12.880Z)", "Billing Main", "PaymentTaken", "2023-03-05T08:20:12.88Z"},
		{"dots and dashes", "IVR.Main-v2Metric_Opt-out.Press_1(2023-03-05T08:18:04Z)", "IVR.Main-v2", "Opt-out.Press_1", "2023-03-05T08:18:04Z"},
		{"leading and trailing spaces kept", " Flow Metric_ A (2023-03-05T08:18:04Z)", " Flow ", " A ", "2023-03-05T08:18:04Z"},
		{"non-ASCII flow and metric", "Kundenführung ÄrgerMetric_Weitergeleitet(2023-03-05T08:18:04Z)", "Kundenführung Ärger", "Weitergeleitet", "2023-03-05T08:18:04Z"},
		{"CJK flow", "顧客ルーティングMetric_不明(2023-03-05T08:18:04Z)", "顧客ルーティング", "不明", "2023-03-05T08:18:04Z"},
		// Right-to-left letters and combining marks are visible text; only
		// invisible format characters are refused.
		{"right-to-left flow", "خدمة العملاءMetric_تحويل(2023-03-05T08:18:04Z)", "خدمة العملاء", "تحويل", "2023-03-05T08:18:04Z"},
		{"Hebrew flow", "שירותMetric_A(2023-03-05T08:18:04Z)", "שירות", "A", "2023-03-05T08:18:04Z"},
		{"combining mark", "Apre\u0300s VenteMetric_A(2023-03-05T08:18:04Z)", "Apre\u0300s Vente", "A", "2023-03-05T08:18:04Z"},
		{"emoji", "Bot 🤖Metric_A(2023-03-05T08:18:04Z)", "Bot 🤖", "A", "2023-03-05T08:18:04Z"},
		{"second Metric_ belongs to the metric", "AMetric_BMetric_C(2023-03-05T08:18:04Z)", "A", "BMetric_C", "2023-03-05T08:18:04Z"},
		{"metric ends with Metric_", "AMetric_Metric_(2023-03-05T08:18:04Z)", "A", "Metric_", "2023-03-05T08:18:04Z"},
		{"parentheses in metric", "FMetric_A(b)(2023-03-05T08:18:04Z)", "F", "A(b)", "2023-03-05T08:18:04Z"},
		{"nested parentheses in metric", "FMetric_Transfer (queue (x))(2023-03-05T08:18:04Z)", "F", "Transfer (queue (x))", "2023-03-05T08:18:04Z"},
		{"parenthesis in flow", "F(1)Metric_A(2023-03-05T08:18:04Z)", "F(1)", "A", "2023-03-05T08:18:04Z"},
		{"0 fractional digits", "FMetric_A(2023-03-05T08:18:04Z)", "F", "A", "2023-03-05T08:18:04Z"},
		{"1 fractional digit", "FMetric_A(2023-03-05T08:18:04.5Z)", "F", "A", "2023-03-05T08:18:04.5Z"},
		{"3 fractional digits", "FMetric_A(2023-03-05T08:18:04.568Z)", "F", "A", "2023-03-05T08:18:04.568Z"},
		{"7 fractional digits (.NET)", "FMetric_A(2023-03-05T08:18:04.5680000Z)", "F", "A", "2023-03-05T08:18:04.568Z"},
		{"9 fractional digits", "FMetric_A(2023-03-05T08:18:04.123456789Z)", "F", "A", "2023-03-05T08:18:04.123456789Z"},
		{"zero offset", "FMetric_A(2023-03-05T08:18:04.568+00:00)", "F", "A", "2023-03-05T08:18:04.568Z"},
		{"negative zero offset (RFC 3339 unknown local offset)", "FMetric_A(2023-03-05T08:18:04-00:00)", "F", "A", "2023-03-05T08:18:04Z"},
		{"positive offset to UTC", "FMetric_A(2023-03-05T09:18:04.568+01:00)", "F", "A", "2023-03-05T08:18:04.568Z"},
		{"negative half-hour offset to UTC", "FMetric_A(2023-03-05T02:48:04-05:30)", "F", "A", "2023-03-05T08:18:04Z"},
		{"offset crosses a year", "FMetric_A(2023-12-31T23:30:00-01:00)", "F", "A", "2024-01-01T00:30:00Z"},
		{"largest offset", "FMetric_A(2023-03-05T08:18:04+23:59)", "F", "A", "2023-03-04T08:19:04Z"},
		// RFC 3339's grammar is ABNF, whose literals are case-insensitive, and
		// its section 5.6 says so for T and Z.
		{"lower-case t and z", "FMetric_A(2023-03-05t08:18:04.568z)", "F", "A", "2023-03-05T08:18:04.568Z"},
		{"leap day", "FMetric_A(2024-02-29T00:00:00Z)", "F", "A", "2024-02-29T00:00:00Z"},
		{"leap day of a 400th year", "FMetric_A(2000-02-29T00:00:00Z)", "F", "A", "2000-02-29T00:00:00Z"},
		{"first representable", "FMetric_A(0000-01-01T00:00:00Z)", "F", "A", "0000-01-01T00:00:00Z"},
		{"last representable", "FMetric_A(9999-12-31T23:59:59.999999999Z)", "F", "A", "9999-12-31T23:59:59.999999999Z"},
		{"value-like characters in metric", "FMetric_a=b;c|d#e(2023-03-05T08:18:04Z)", "F", "a=b;c|d#e", "2023-03-05T08:18:04Z"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, ok, err := ParseAttribute(tt.attr)
			if !ok || err != nil {
				t.Fatalf("ParseAttribute(%q): got ok=%v err=%v, want ok", tt.attr, ok, err)
			}
			if a.Flow != tt.flow || a.Metric != tt.metric {
				t.Errorf("got flow %q metric %q, want %q %q", a.Flow, a.Metric, tt.flow, tt.metric)
			}
			if want := utc(tt.time); !a.Time.Equal(want) || a.Time.Location() != time.UTC {
				t.Errorf("got time %v, want %v in UTC", a.Time, want)
			}
		})
	}
}

func TestParseAttributeNotMetric(t *testing.T) {
	tests := []struct{ name, attr string }{
		{"ordinary attribute", "AccountID"},
		{"empty", ""},
		{"marker alone", "Metric_"},
		{"no underscore", "CustomerRoutingMetric(2023-03-05T08:18:04.568Z)"},
		{"marker is case-sensitive", "CustomerRoutingmetric_Unknown(2023-03-05T08:18:04.568Z)"},
		{"marker upper case", "CustomerRoutingMETRIC_Unknown(2023-03-05T08:18:04.568Z)"},
		{"no parenthesis", "CustomerRoutingMetric_Unknown"},
		{"no opening parenthesis", "CustomerRoutingMetric_Unknown2023-03-05T08:18:04.568Z)"},
		{"parenthesis only before the marker", "Flow(2023-03-05T08:18:04.568Z)Metric_Unknown"},
		{"other brackets", "CustomerRoutingMetric_Unknown[2023-03-05T08:18:04.568Z]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, ok, err := ParseAttribute(tt.attr)
			if ok || err != nil || a != (Attribute{}) {
				t.Errorf("ParseAttribute(%q): got %+v ok=%v err=%v, want zero, false, nil", tt.attr, a, ok, err)
			}
		})
	}
}

func TestParseAttributeMalformed(t *testing.T) {
	const ts = "2023-03-05T08:18:04.568Z"
	tests := []struct {
		name, attr string
		flow       string
		err        error
	}{
		{"empty flow", "Metric_Unknown(" + ts + ")", "", errEmptyFlow},
		{"empty metric", "FMetric_(" + ts + ")", "F", errEmptyMetric},
		{"empty flow and metric", "Metric_(" + ts + ")", "", errEmptyFlow},
		{"missing closing parenthesis", "FMetric_A(" + ts, "F", errNoClosingParen},
		{"missing closing parenthesis after parenthesised metric", "FMetric_A(b)(" + ts, "F", errNoClosingParen},
		{"text after the parenthesis", "FMetric_A(" + ts + ")x", "F", errTextAfterParen},
		{"space after the parenthesis", "FMetric_A(" + ts + ") ", "F", errTextAfterParen},
		{"flow of a malformed name is still given", "Billing MainMetric_Paid(" + ts, "Billing Main", errNoClosingParen},
		{"invalid UTF-8", "F\xffMetric_A(" + ts + ")", "F\uFFFD", errInvalidUTF8},
		{"control character in flow", "F\nMetric_A(" + ts + ")", "F\n", errControlInFlow},
		{"DEL in flow", "F\x7fMetric_A(" + ts + ")", "F\x7f", errControlInFlow},
		{"control character in metric", "FMetric_A\tB(" + ts + ")", "F", errControlInMetric},
		{"C1 control in flow", "F\u0085Metric_A(" + ts + ")", "F\u0085", errControlInFlow},
		{"C1 control in metric", "FMetric_A\u009bB(" + ts + ")", "F", errControlInMetric},
		// Invisible format characters (Unicode Cf): two names that are
		// different keys would look the same, or one like another.
		{"right-to-left override in flow", "Billing\u202eMainMetric_Paid(" + ts + ")", "Billing\u202eMain", errFormatInFlow},
		{"left-to-right embedding in flow", "\u202aBillingMetric_Paid(" + ts + ")", "\u202aBilling", errFormatInFlow},
		{"pop directional formatting in metric", "BillingMetric_Paid\u202c(" + ts + ")", "Billing", errFormatInMetric},
		{"right-to-left isolate in metric", "BillingMetric_\u2067Paid\u2069(" + ts + ")", "Billing", errFormatInMetric},
		{"first strong isolate in flow", "\u2068BillingMetric_Paid(" + ts + ")", "\u2068Billing", errFormatInFlow},
		{"zero-width space in flow", "Billing\u200bMainMetric_Paid(" + ts + ")", "Billing\u200bMain", errFormatInFlow},
		{"zero-width non-joiner in metric", "BillingMetric_Pa\u200cid(" + ts + ")", "Billing", errFormatInMetric},
		{"zero-width joiner in metric", "BillingMetric_Pa\u200did(" + ts + ")", "Billing", errFormatInMetric},
		{"left-to-right mark in metric", "BillingMetric_Paid\u200e(" + ts + ")", "Billing", errFormatInMetric},
		{"right-to-left mark in flow", "Billing\u200fMetric_Paid(" + ts + ")", "Billing\u200f", errFormatInFlow},
		{"byte-order mark in flow", "\ufeffBillingMetric_Paid(" + ts + ")", "\ufeffBilling", errFormatInFlow},
		{"word joiner in metric", "BillingMetric_Pa\u2060id(" + ts + ")", "Billing", errFormatInMetric},
		{"soft hyphen in metric", "BillingMetric_Pay\u00adment(" + ts + ")", "Billing", errFormatInMetric},
		{"arabic letter mark in flow", "\u061cBillingMetric_Paid(" + ts + ")", "\u061cBilling", errFormatInFlow},
		{"tag character in metric", "BillingMetric_Paid\U000e0041(" + ts + ")", "Billing", errFormatInMetric},
		{"line separator in flow", "Billing\u2028MainMetric_Paid(" + ts + ")", "Billing\u2028Main", errFormatInFlow},
		{"paragraph separator in metric", "BillingMetric_Paid\u2029(" + ts + ")", "Billing", errFormatInMetric},
		{"empty time", "FMetric_A()", "F", errTimeEmpty},
		{"not a time", "CustomerRoutingMetric_Oops(not-a-time)", "CustomerRouting", errTimeLayout},
		{"date only", "FMetric_A(2023-03-05)", "F", errTimeLayout},
		{"no seconds", "FMetric_A(2023-03-05T08:18Z)", "F", errTimeLayout},
		{"single-digit fields", "FMetric_A(2023-3-5T8:18:04.568Z)", "F", errTimeLayout},
		{"space around the time", "FMetric_A( " + ts + ")", "F", errTimeLayout},
		{"trailing space in the time", "FMetric_A(" + ts + " )", "F", errTimeZone},
		{"signed year", "FMetric_A(+2023-03-05T08:18:04Z)", "F", errTimeLayout},
		{"five-digit year", "FMetric_A(12023-03-05T08:18:04Z)", "F", errTimeLayout},
		{"non-ASCII digits", "FMetric_A(２０２３-03-05T08:18:04Z)", "F", errTimeLayout},
		// RFC 3339 mentions a space only as something an application may
		// choose; the contract names T.
		{"space instead of T", "FMetric_A(2023-03-05 08:18:04.568Z)", "F", errTimeSpace},
		{"other separator", "FMetric_A(2023-03-05_08:18:04.568Z)", "F", errTimeLayout},
		{"no zone", "FMetric_A(2023-03-05T08:18:04.568)", "F", errTimeZone},
		{"zone name", "FMetric_A(2023-03-05T08:18:04.568UTC)", "F", errTimeZone},
		{"offset without colon", "FMetric_A(2023-03-05T08:18:04+0100)", "F", errTimeZone},
		{"offset hours only", "FMetric_A(2023-03-05T08:18:04+01)", "F", errTimeZone},
		{"offset with seconds", "FMetric_A(2023-03-05T08:18:04+01:00:00)", "F", errTimeZone},
		{"Z and offset", "FMetric_A(2023-03-05T08:18:04Z+01:00)", "F", errTimeZone},
		{"offset hour 24", "FMetric_A(2023-03-05T08:18:04+24:00)", "F", errTimeOffset},
		{"offset minute 60", "FMetric_A(2023-03-05T08:18:04+01:60)", "F", errTimeOffset},
		{"comma before fraction", "FMetric_A(2023-03-05T08:18:04,568Z)", "F", errTimeLayout},
		{"point without digits", "FMetric_A(2023-03-05T08:18:04.Z)", "F", errTimeNoFraction},
		{"10 fractional digits", "FMetric_A(2023-03-05T08:18:04.1234567890Z)", "F", errTimeLongFraction},
		{"month 13", "FMetric_A(2023-13-05T08:18:04Z)", "F", errTimeMonth},
		{"month 0", "FMetric_A(2023-00-05T08:18:04Z)", "F", errTimeMonth},
		{"day 0", "FMetric_A(2023-03-00T08:18:04Z)", "F", errTimeDay},
		{"February 30", "FMetric_A(2024-02-30T08:18:04Z)", "F", errTimeDay},
		{"February 29 of a common year", "FMetric_A(2023-02-29T08:18:04Z)", "F", errTimeDay},
		{"February 29 of a century", "FMetric_A(1900-02-29T08:18:04Z)", "F", errTimeDay},
		{"April 31", "FMetric_A(2023-04-31T08:18:04Z)", "F", errTimeDay},
		{"hour 24", "FMetric_A(2023-03-05T24:00:00Z)", "F", errTimeHour},
		{"minute 60", "FMetric_A(2023-03-05T08:60:04Z)", "F", errTimeMinute},
		// Go's time cannot represent a leap second, and Genesys does not
		// write one.
		{"leap second", "FMetric_A(2016-12-31T23:59:60Z)", "F", errTimeSecond},
		{"before year 0000 in UTC", "FMetric_A(0000-01-01T00:30:00+01:00)", "F", errTimeYear},
		{"after year 9999 in UTC", "FMetric_A(9999-12-31T23:30:00-01:00)", "F", errTimeYear},
		{"time in nested parentheses", "FMetric_A(" + ts + "(x))", "F", errTimeLayout},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, ok, err := ParseAttribute(tt.attr)
			if ok || err == nil {
				t.Fatalf("ParseAttribute(%q): got ok=%v err=%v, want malformed", tt.attr, ok, err)
			}
			if err != tt.err {
				t.Errorf("got error %q, want %q", err, tt.err)
			}
			if a.Flow != tt.flow {
				t.Errorf("got flow %q, want %q", a.Flow, tt.flow)
			}
			if !utf8.ValidString(a.Flow) {
				t.Errorf("got flow %q, want valid UTF-8", a.Flow)
			}
		})
	}
}

// The reasons are shown to flow authors and used as messages: lower case,
// no trailing punctuation.
func TestParseAttributeReasons(t *testing.T) {
	for _, err := range []error{
		errNoClosingParen, errTextAfterParen, errInvalidUTF8, errEmptyFlow, errEmptyMetric,
		errControlInFlow, errControlInMetric, errTimeEmpty, errTimeLayout, errTimeSpace,
		errTimeNoFraction, errTimeLongFraction, errTimeZone, errTimeMonth, errTimeDay,
		errTimeHour, errTimeMinute, errTimeSecond, errTimeOffset, errTimeYear,
	} {
		msg := err.Error()
		r, _ := utf8.DecodeRuneInString(msg)
		if unicode.IsUpper(r) || strings.HasSuffix(msg, ".") {
			t.Errorf("got reason %q, want lower case without a final period", msg)
		}
	}
}

func TestParseAttributeDoesNotAllocate(t *testing.T) {
	names := []string{
		"CustomerRoutingMetric_Unknown(2023-03-05T08:18:04.568+01:00)",
		"AccountID",
		"CustomerRoutingMetric_Oops(not-a-time)",
	}
	for _, name := range names {
		if n := testing.AllocsPerRun(100, func() { ParseAttribute(name) }); n != 0 {
			t.Errorf("ParseAttribute(%q): got %v allocations, want 0", name, n)
		}
	}
}

// TestAttributeNameRoundTrip: AttributeName is the inverse of
// ParseAttribute.
func TestAttributeNameRoundTrip(t *testing.T) {
	at := time.Date(2023, 3, 5, 8, 18, 4, 568_000_000, time.FixedZone("CET", 3600))
	for _, tc := range []struct{ flow, metric string }{
		{"CustomerRouting", "Unknown"},
		{"Gestión Pagos", "Pago-OK"},
		{"Billing.Main v2", "Step(1)"},
	} {
		name := AttributeName(tc.flow, tc.metric, at)
		a, ok, err := ParseAttribute(name)
		if !ok || err != nil || a.Flow != tc.flow || a.Metric != tc.metric || !a.Time.Equal(at) {
			t.Errorf("ParseAttribute(%q): got %+v, %v, %v; want %s/%s at %v", name, a, ok, err, tc.flow, tc.metric, at)
		}
	}
	if got, want := AttributeName("CustomerRouting", "Unknown", at), "CustomerRoutingMetric_Unknown(2023-03-05T07:18:04.568Z)"; got != want {
		t.Errorf("AttributeName: got %q, want %q", got, want)
	}
}

// TestPrintableASCII checks the eight-bytes-at-a-time test against the
// plain one: every byte value at every place of names of several lengths,
// so each lane of a word and the tail are covered.
func TestPrintableASCII(t *testing.T) {
	naive := func(s string) bool {
		for i := 0; i < len(s); i++ {
			if s[i] < 0x20 || s[i] > 0x7e {
				return false
			}
		}
		return true
	}
	for _, n := range []int{0, 1, 7, 8, 9, 16, 23} {
		base := []byte(strings.Repeat("~ aZ(9)_", 3)[:n])
		if !printableASCII(string(base)) {
			t.Errorf("%q: got false, want true", base)
		}
		for i := range base {
			for c := range 256 {
				b := slices.Clone(base)
				b[i] = byte(c)
				if got, want := printableASCII(string(b)), naive(string(b)); got != want {
					t.Errorf("%q: got %v, want %v", b, got, want)
				}
			}
		}
	}
}
