package pebblestore

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/storetest"
)

func pathOptions(clock *storetest.Clock) store.Options {
	return store.Options{Now: clock.Now, Paths: &flowmetrics.PathOptions{Grace: time.Minute, Idle: time.Hour}}
}

// dueEntries returns the deadline index: conversation id -> deadlines.
func dueEntries(t *testing.T, s *Store) map[string][]int64 {
	t.Helper()
	out := map[string][]int64{}
	err := s.scan(duePrefix, func(k, _ []byte) error {
		k = k[len(duePrefix):]
		out[string(k[8:])] = append(out[string(k[8:])], int64(binary.BigEndian.Uint64(k[:8])))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestPathStateRidesOnTheHeader: with paths on, a claim writes no record of
// its own for the path, and moves the conversation's deadline index entry
// only when the deadline moved by a step or more, so the keys a
// conversation gets in quick succession cost what they cost without paths.
func TestPathStateRidesOnTheHeader(t *testing.T) {
	ctx := context.Background()
	clock := storetest.NewClock(t0)
	conv := "c-000000000000000000000000000000000"
	// written returns the bytes each of 5 claims of a new key, a second
	// apart, wrote to the log.
	written := func(s *Store) []uint64 {
		var out []uint64
		for i := range 6 {
			before := walBytes(s)
			if got, err := s.Claim(ctx, []flowmetrics.ClaimRequest{{ConversationID: conv, Occurrences: occs(1, i)}}); err != nil || len(got) != 1 {
				t.Fatalf("claim %d: got %d new (%v), want 1", i, len(got), err)
			}
			if i > 0 {
				out = append(out, walBytes(s)-before)
			}
			clock.Advance(time.Second)
		}
		return out
	}
	off := written(mustOpen(t, t.TempDir(), store.Options{Now: clock.Now}))
	first := clock.Now().Add(time.Hour + pathOptions(clock).Paths.Step()).UnixNano()
	s := mustOpen(t, t.TempDir(), pathOptions(clock))
	on := written(s)
	// The header carries the keys either way; with paths on it adds its
	// path state: two deadlines (the flag byte is there either way).
	for i := range on {
		if on[i] > off[i]+20 {
			t.Errorf("claim %d: wrote %d bytes with paths on, %d with paths off; want at most 20 more (no index entry moved)", i+1, on[i], off[i])
		}
	}
	if got := dueEntries(t, s); len(got) != 1 || len(got[conv]) != 1 || got[conv][0] != first {
		t.Errorf("index: got %v, want one entry at the first deadline %d", got, first)
	}
	n := records(t, s, pathPrefix)
	if n != 0 {
		t.Errorf("path records: got %d, want none (the header holds the path)", n)
	}
}

// TestOpenConvertsPathRecords: a store whose path states were records of
// their own (p/) opens with them in the headers, and closes each path once,
// at its deadline.
func TestOpenConvertsPathRecords(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	clock := storetest.NewClock(t0)
	s := mustOpen(t, dir, store.Options{Now: clock.Now})
	a := storetest.Occ("F", "A", t0)
	for _, id := range []string{"open", "closed"} {
		if _, err := s.Claim(ctx, []flowmetrics.ClaimRequest{{ConversationID: id, Occurrences: []flowmetrics.Occurrence{a}}}); err != nil {
			t.Fatal(err)
		}
	}
	due := t0.Add(time.Hour).UnixNano()
	oldPath := func(due int64, flags byte) []byte {
		b := binary.AppendVarint(nil, t0.UnixNano())
		b = binary.AppendVarint(b, due)
		return append(b, flags)
	}
	b := s.db.NewBatch()
	b.Set(append([]byte("p/"), "open"...), oldPath(due, 0), nil)
	b.Set(dueKey(due, "open"), nil, nil)
	b.Set(append([]byte("p/"), "closed"...), oldPath(0, pathClosed|pathEnded), nil)
	if err := b.Commit(pebble.Sync); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s = mustOpen(t, dir, pathOptions(clock))
	closed := map[string]int{}
	derive := func(cp flowmetrics.ClosedPath) []flowmetrics.PathPoint {
		closed[cp.ConversationID]++
		// Its header, written before headers carried the keys, has none:
		// the close reads them.
		if !slices.Equal(cp.Keys, []string{a.Key}) {
			t.Errorf("%s: derived from keys %q, want %q", cp.ConversationID, cp.Keys, a.Key)
		}
		return nil
	}
	if n, err := s.ClosePaths(ctx, time.Unix(0, due-1), 0, derive); err != nil || n != 0 {
		t.Errorf("before the deadline: closed %d (%v), want 0", n, err)
	}
	if n, err := s.ClosePaths(ctx, time.Unix(0, due), 0, derive); err != nil || n != 1 || closed["open"] != 1 {
		t.Errorf("at the deadline: closed %d (%v) %v, want the open one", n, err, closed)
	}
	got, err := s.Claim(ctx, []flowmetrics.ClaimRequest{{ConversationID: "closed", Occurrences: []flowmetrics.Occurrence{storetest.Occ("F", "B", t0)}}})
	if err != nil || len(got) != 1 || !got[0].AfterClose {
		t.Errorf("late key of the converted closed path: got %+v (%v), want new with AfterClose", got, err)
	}
	n := records(t, s, pathPrefix)
	if n != 0 {
		t.Errorf("path records after opening: got %d, want none", n)
	}
}

// TestCloseDerivesFromTheHeader: a conversation's header carries its keys,
// and its close reads none of them; a conversation whose keys outgrow
// maxInlineBytes has a header of bounded size, and its close reads its
// keys. Both derive from every key they hold.
func TestCloseDerivesFromTheHeader(t *testing.T) {
	ctx := context.Background()
	clock := storetest.NewClock(t0)
	s := mustOpen(t, t.TempDir(), pathOptions(clock))
	small, large := occs(3, 0), occs(150, 0)
	for i := range large {
		// Claimed one by one: each claim extends the keys the header
		// carries, until they no longer fit.
		if _, err := s.Claim(ctx, []flowmetrics.ClaimRequest{{ConversationID: "large", Occurrences: large[i : i+1]}}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Claim(ctx, []flowmetrics.ClaimRequest{{ConversationID: "small", Occurrences: small}, {ConversationID: "small", Ended: true}, {ConversationID: "large", Ended: true}}); err != nil {
		t.Fatal(err)
	}
	v, closer, err := s.db.Get(headerKey("large"))
	if err != nil {
		t.Fatal(err)
	}
	if len(v) > 64 {
		t.Errorf("header of a conversation of %d keys: %d bytes, want at most 64 (no copy of its keys)", len(large), len(v))
	}
	closer.Close()
	// The small conversation's keys are gone from the store: only its
	// header can tell them.
	// (Its header is the prefix itself, just before them, and stays.)
	p := keyPrefixOf("small")
	if err := s.db.DeleteRange(append(bytes.Clone(p), 0), prefixEnd(p), pebble.Sync); err != nil {
		t.Fatal(err)
	}
	got := map[string][]string{}
	derive := func(cp flowmetrics.ClosedPath) []flowmetrics.PathPoint {
		got[cp.ConversationID] = slices.Sorted(slices.Values(cp.Keys))
		return nil
	}
	if n, err := s.ClosePaths(ctx, clock.Now().Add(time.Minute), 0, derive); err != nil || n != 2 {
		t.Fatalf("ClosePaths: closed %d (%v), want 2", n, err)
	}
	for id, want := range map[string][]flowmetrics.Occurrence{"small": small, "large": large} {
		var keys []string
		for _, o := range want {
			keys = append(keys, o.Key)
		}
		slices.Sort(keys)
		if !slices.Equal(got[id], keys) {
			t.Errorf("%s: derived from %d keys %q, want %d", id, len(got[id]), got[id], len(keys))
		}
	}
}

// TestPathPointsRoundTrip: an outbox entry of path points reads back as
// written, in the form written now (a table of the entry's names; a point
// leaves out the conversation and time of the point before it) and in the
// two forms written before it, which stores written by earlier versions
// hold.
func TestPathPointsRoundTrip(t *testing.T) {
	at := t0.Add(1500 * time.Millisecond)
	points := []flowmetrics.PathPoint{
		{Kind: flowmetrics.PathStep, Flow: "F", Metric: "B", Seconds: 1.5, Time: at, Conversation: "c1"},
		{Kind: flowmetrics.PathExit, Flow: "F", Metric: "B", Time: at, Conversation: "c1"},
		{Kind: flowmetrics.PathTiming, Name: "t", Seconds: 0.25, Time: at, Conversation: "c1"},
		{Kind: flowmetrics.PathExit, Flow: "F", Metric: "A", Time: t0, Conversation: "c2"},
		{Kind: flowmetrics.PathExperiment, Name: "x", Variant: "B", Step: "F/A", Time: t0, Conversation: "c2"},
		{Kind: flowmetrics.PathFunnel, Name: "f", Step: "F/A", Time: t0, Conversation: "c3"},
	}
	occ := []flowmetrics.Occurrence{storetest.Occ("F", "A", t0)}
	gotOccs, got, err := decodeEntry(encodeEntry(occ, points))
	if err != nil || len(gotOccs) != 1 || !slices.Equal(got, points) {
		t.Errorf("round trip: got %+v, %+v (%v), want %+v", gotOccs, got, err, points)
	}
	// The first form: every field of every point.
	old := binary.AppendUvarint(nil, 0)
	old = binary.AppendUvarint(old, uint64(len(points)))
	for _, p := range points {
		old = append(old, byte(p.Kind))
		for _, s := range []string{p.Flow, p.Metric, p.Name, p.Variant, p.Step, p.Conversation} {
			old = appendString(old, s)
		}
		old = binary.BigEndian.AppendUint64(old, math.Float64bits(p.Seconds))
		old = binary.AppendVarint(old, p.Time.Unix())
		old = binary.AppendUvarint(old, uint64(p.Time.Nanosecond()))
	}
	if _, got, err := decodeEntry(old); err != nil || !slices.Equal(got, points) {
		t.Errorf("entry of the first form: got %+v (%v), want %+v", got, err, points)
	}
	// The second form: every name, but not the conversation of the point
	// before nor a zero duration.
	v1 := binary.AppendUvarint(nil, 0)
	v1 = binary.AppendUvarint(v1, uint64(len(points)))
	for i, p := range points {
		kind := byte(p.Kind)
		same := i > 0 && p.Conversation == points[i-1].Conversation
		if same {
			kind |= 0x80
		}
		if p.Seconds == 0 {
			kind |= 0x40
		}
		v1 = append(v1, kind)
		for _, s := range []string{p.Flow, p.Metric, p.Name, p.Variant, p.Step} {
			v1 = appendString(v1, s)
		}
		if !same {
			v1 = appendString(v1, p.Conversation)
		}
		if p.Seconds != 0 {
			v1 = binary.BigEndian.AppendUint64(v1, math.Float64bits(p.Seconds))
		}
		v1 = binary.AppendVarint(v1, p.Time.Unix())
		v1 = binary.AppendUvarint(v1, uint64(p.Time.Nanosecond()))
	}
	if _, got, err := decodeEntry(v1); err != nil || !slices.Equal(got, points) {
		t.Errorf("entry of the second form: got %+v (%v), want %+v", got, err, points)
	}
	if now := len(encodeEntry(nil, points)); now >= len(v1) {
		t.Errorf("entry: %d bytes, want fewer than the %d of the second form", now, len(v1))
	}
}

// TestPathPointsRoundTripRandom: random points (names shared or not,
// conversations UUIDs or not, durations whole nanoseconds or not, times
// before 1970 and far from each other) read back exactly; every shorter prefix of the entry, and every
// entry with a byte changed, reads as an error or as points, never a
// panic.
func TestPathPointsRoundTripRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	names := []string{"", "", "F", "G", "Metric", "a/b", "ünï"}
	pick := func() string { return names[rng.IntN(len(names))] }
	// Conversation ids: UUIDs as Genesys Cloud writes them, and ids
	// that are nearly UUIDs.
	convs := []string{"c1", "", "743a6a45-0000-4000-8640-d59725fa3c01", "743A6A45-0000-4000-8640-D59725FA3C01",
		"743a6a45-0000-4000-8640-d59725fa3c0g", "743a6a45-0000-4000-8640d-59725fa3c01", "743a6a45-0000-4000-8640-d59725fa3c011",
		"743a6a45+0000-4000-8640-d59725fa3c01", "ffffffff-ffff-ffff-ffff-ffffffffffff"}
	for round := range 300 {
		points := make([]flowmetrics.PathPoint, 1+rng.IntN(20))
		at := time.Unix(rng.Int64N(1<<40)-1<<39, 0).UTC()
		conv := convs[0]
		for i := range points {
			if rng.IntN(3) == 0 {
				conv = convs[rng.IntN(len(convs))]
				if rng.IntN(2) == 0 {
					conv = fmt.Sprintf("%08x-%04x-4%03x-8%03x-%012x", rng.Uint32(), rng.IntN(1<<16), rng.IntN(1<<12), rng.IntN(1<<12), rng.Int64N(1<<48))
				}
			}
			switch rng.IntN(4) {
			case 0:
				at = at.Add(time.Duration(rng.Int64N(1e12)) - 5e11)
			case 1:
				at = at.Add(time.Duration(rng.Int64N(1e6)) * time.Millisecond)
			case 2:
				at = time.Unix(rng.Int64N(1<<40)-1<<39, rng.Int64N(1e9)).UTC()
			}
			var secs float64
			switch rng.IntN(4) {
			case 0:
				secs = time.Duration(rng.Int64N(1e13) - 1e12).Seconds()
			case 1:
				secs = rng.Float64() * 1e4
			case 2:
				secs = math.Inf(1)
			}
			points[i] = flowmetrics.PathPoint{Kind: flowmetrics.PathKind(1 + rng.IntN(5)), Flow: pick(), Metric: pick(), Name: pick(), Variant: pick(), Step: pick(), Seconds: secs, Time: at, Conversation: conv}
		}
		entry := encodeEntry(nil, points)
		_, got, err := decodeEntry(entry)
		if err != nil || !slices.Equal(got, points) {
			t.Fatalf("round %d: got %+v (%v), want %+v", round, got, err, points)
		}
		for n := range len(entry) {
			if _, _, err := decodeEntry(entry[:n]); err == nil && n > 1 {
				t.Fatalf("round %d: the first %d of %d bytes read without an error", round, n, len(entry))
			}
			changed := slices.Clone(entry)
			changed[n] ^= byte(1 + rng.IntN(255))
			decodeEntry(changed)
		}
	}
}

// records counts the records under prefix, failing t if they cannot be
// read.
func records(t *testing.T, s *Store, prefix []byte) int {
	t.Helper()
	n := 0
	if err := s.scan(prefix, func(k, v []byte) error { n++; return nil }); err != nil {
		t.Fatalf("reading the records under %q: %v", prefix, err)
	}
	return n
}

// BenchmarkClosePathsOf: a replay's closes after a batch, 300 ended
// conversations of 3 keys each named at once, among 30,000 claimed in the
// same memtable; per conversation closed.
func BenchmarkClosePathsOf(b *testing.B) {
	ctx := context.Background()
	clock := storetest.NewClock(t0)
	s := mustOpen(b, b.TempDir(), pathOptions(clock))
	defer s.Close()
	derive := func(cp flowmetrics.ClosedPath) []flowmetrics.PathPoint {
		return []flowmetrics.PathPoint{{Kind: flowmetrics.PathExit, Conversation: cp.ConversationID, Flow: "Flow", Metric: "Step", Time: t0}}
	}
	const convs, chunk = 30_000, 300
	claim := func(round int) []string {
		ids := make([]string, 0, convs)
		reqs := make([]flowmetrics.ClaimRequest, 0, chunk)
		for i := range convs {
			id := fmt.Sprintf("%08x-0000-4000-8000-%012x", round, i)
			ids = append(ids, id)
			reqs = append(reqs, flowmetrics.ClaimRequest{ConversationID: id, Occurrences: occs(3, 0), Ended: true})
			if len(reqs) == chunk {
				if _, err := s.Claim(ctx, reqs); err != nil {
					b.Fatal(err)
				}
				reqs = reqs[:0]
			}
		}
		return ids
	}
	closed, round := 0, 0
	var ids []string
	for b.Loop() {
		if len(ids) == 0 {
			b.StopTimer()
			ids = claim(round)
			round++
			clock.Advance(2 * time.Minute)
			b.StartTimer()
		}
		// Every third conversation of the next stretch, in no key order.
		var named []string
		for i := 0; i < 3*chunk && i < len(ids); i += 3 {
			named = append(named, ids[i], ids[i+1], ids[i+2])
		}
		ids = ids[len(named):]
		n, err := s.ClosePathsOf(ctx, named, clock.Now(), derive)
		if err != nil || n != len(named) {
			b.Fatalf("closed %d of %d (%v)", n, len(named), err)
		}
		closed += n
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(closed), "ns/path")
}

// TestPathsEntryAsEncodeEntry: a close encodes its points one conversation
// at a time, as derived; the entry is the one encodeEntry writes of them
// all, and reads back as them.
func TestPathsEntryAsEncodeEntry(t *testing.T) {
	var all []flowmetrics.PathPoint
	var w pointsWriter
	for c, n := range []int{2, 0, 1, 3} {
		for i := range n {
			p := flowmetrics.PathPoint{Kind: flowmetrics.PathKind(1 + i%3), Flow: "F", Metric: fmt.Sprint("M", i), Conversation: fmt.Sprint("c", c), Time: t0.Add(time.Duration(i) * time.Second)}
			if i == 1 {
				p.Seconds = 1.5
			}
			w.add(&p)
			all = append(all, p)
		}
	}
	got, want := w.entry(), encodeEntry(nil, all)
	if !bytes.Equal(got, want) {
		t.Fatalf("entry:\n got %x\nwant %x", got, want)
	}
	occs, paths, err := decodeEntry(got)
	if err != nil || len(occs) != 0 || !slices.Equal(paths, all) {
		t.Fatalf("decoded: %d occurrences, %+v (%v); want 0, %+v", len(occs), paths, err, all)
	}
}

// TestClosePathsReadsOnPastStaleEntries: a sweep whose first index entries
// are not due (their paths got new keys since they were filed) reads on
// and closes its limit of those that are.
func TestClosePathsReadsOnPastStaleEntries(t *testing.T) {
	ctx := context.Background()
	clock := storetest.NewClock(t0)
	s := mustOpen(t, t.TempDir(), pathOptions(clock))
	defer s.Close()
	for _, id := range []string{"a0", "a1", "a2", "a3", "a4", "b0", "b1", "b2", "b3", "b4", "b5"} {
		if _, err := s.Claim(ctx, []flowmetrics.ClaimRequest{{ConversationID: id, Occurrences: occs(1, 0)}}); err != nil {
			t.Fatal(err)
		}
	}
	// New keys less than a step later: the a's deadlines move, their
	// entries, first in the index, stay where they were filed.
	clock.Advance(100 * time.Second)
	for _, id := range []string{"a0", "a1", "a2", "a3", "a4"} {
		if _, err := s.Claim(ctx, []flowmetrics.ClaimRequest{{ConversationID: id, Occurrences: occs(1, 1)}}); err != nil {
			t.Fatal(err)
		}
	}
	closedIDs := map[string]bool{}
	derive := func(cp flowmetrics.ClosedPath) []flowmetrics.PathPoint {
		closedIDs[cp.ConversationID] = true
		return nil
	}
	n, err := s.ClosePaths(ctx, t0.Add(time.Hour+pathOptions(clock).Paths.Step()), 5, derive)
	if err != nil || n != 5 {
		t.Fatalf("ClosePaths with limit 5: closed %d (%v), want 5", n, err)
	}
	for id := range closedIDs {
		if id[0] != 'b' {
			t.Errorf("closed %s, not due", id)
		}
	}
	due := dueEntries(t, s)
	for _, id := range []string{"a0", "a1", "a2", "a3", "a4"} {
		if got, want := due[id], []int64{t0.Add(time.Hour + 100*time.Second + pathOptions(clock).Paths.Step()).UnixNano()}; !slices.Equal(got, want) {
			t.Errorf("%s filed at %v, want %v (filed again at its deadline)", id, got, want)
		}
	}
	if n, err := s.ClosePaths(ctx, t0.Add(time.Hour+pathOptions(clock).Paths.Step()), 5, derive); err != nil || n != 1 {
		t.Errorf("the next sweep closed %d (%v), want the last b", n, err)
	}
}

// BenchmarkPathPointsEntry: a close batch's outbox entry of 256
// conversations' points, as the replay of a corpus derives them (a step
// timing, two exits and a funnel step each, times in milliseconds),
// encoded and read back; per point.
func BenchmarkPathPointsEntry(b *testing.B) {
	var points []flowmetrics.PathPoint
	for c := range 256 {
		conv := fmt.Sprintf("%08x-0000-4000-8000-%012x", c, c)
		start := t0.Add(time.Duration(c) * 150 * time.Millisecond)
		at := start.Add(time.Duration(1000+37*c) * time.Millisecond)
		points = append(points,
			flowmetrics.PathPoint{Kind: flowmetrics.PathStep, Flow: "MainMenu", Metric: fmt.Sprint("Option", c%4), Seconds: at.Sub(start).Seconds(), Time: at, Conversation: conv},
			flowmetrics.PathPoint{Kind: flowmetrics.PathExit, Flow: "MainMenu", Metric: fmt.Sprint("Option", c%4), Time: at, Conversation: conv},
			flowmetrics.PathPoint{Kind: flowmetrics.PathExit, Flow: "Callback", Metric: "Offered", Time: start, Conversation: conv},
			flowmetrics.PathPoint{Kind: flowmetrics.PathFunnel, Name: "callback", Step: "Callback/Offered", Time: start, Conversation: conv},
		)
	}
	size := 0
	for b.Loop() {
		e := encodeEntry(nil, points)
		size = len(e)
		if _, got, err := decodeEntry(e); err != nil || len(got) != len(points) {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(points)), "ns/point")
	b.ReportMetric(float64(size)/float64(len(points)), "B/point")
}
