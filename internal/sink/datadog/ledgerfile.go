package datadog

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/flowmetrics/flowmetrics/internal/naming"
	"github.com/flowmetrics/flowmetrics/internal/telemetry"
)

// The ledger file.
//
// It starts with ledgerMagic and then holds records, each
//
//	uint32 length of payload (little endian)
//	uint32 CRC-32C of payload
//	payload
//
// where payload is one of
//
//	'S' uvarint(id) key    declares series id: key is the series' name and
//	                       tags joined with NUL bytes
//	'T' uvarint(id) varint(second) varint(total)
//	                       the total Datadog holds for series id at that
//	                       Unix second
//
// Records are only appended; for one series and second the last T record
// wins. A record cut short by a crash, or whose checksum does not match,
// ends the file: it and anything after it are dropped when the file is
// opened. The file is rewritten whole (to a temporary file, fsynced, renamed
// over it, directory fsynced) when it is opened and whenever appended
// records outnumber the live totals by far, which also drops totals older
// than PruneAge.
const ledgerMagic = "flowmetrics datadog ledger v1\n"

const (
	recSeries = 'S'
	recTotal  = 'T'
	// maxLedgerRecord bounds one record; anything longer is corruption
	// (a series key is a name of at most 200 bytes and a few tags).
	maxLedgerRecord = 1 << 20
	// compactSlack is how many records beyond twice the live totals the
	// file may hold before it is rewritten.
	compactSlack = 16384
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// LedgerPath returns where `flowmetrics serve` keeps the ledger of the named
// sink: <dataDir>/<sink>-ledger, e.g. LedgerPath("/var/lib/flowmetrics",
// datadog.Name) is /var/lib/flowmetrics/datadog-ledger.
func LedgerPath(dataDir, sink string) string {
	return filepath.Join(dataDir, sink+"-ledger")
}

// ledgerFile is the persistent side of a Ledger. Its fields are guarded by
// the Ledger's mu.
type ledgerFile struct {
	path string // absolute
	f    *os.File
	// ids maps the series keys declared in the file to their ids.
	ids     map[string]uint64
	records int  // records in the file
	broken  bool // a write failed: the next Commit rewrites the file
	closed  bool
	// fault, set by tests, makes the write of op ("append" or "rewrite")
	// fail.
	fault func(op string) error
}

// openLedgers holds the ledger files open in this process: two Ledgers
// appending to one file would corrupt it.
var openLedgers = struct {
	sync.Mutex
	paths map[string]bool
}{paths: map[string]bool{}}

// OpenLedger returns a Ledger whose totals are also kept in the file at path,
// created if missing (with its directory). With an empty path it is
// NewLedger: memory only.
//
// Opening loads the file, cutting a torn or corrupt last record (logged as a
// warning: the totals it held are forgotten, which can only undercount),
// forgets totals older than PruneAge and rewrites the file compactly. A file
// that is not a ledger file is an error, so a mistaken path is not
// overwritten. One file can be open only once in a process.
//
// The totals Delivered records become durable with Commit; Close releases the
// file without committing. m and log may be nil.
func OpenLedger(path, sink string, namer *naming.Namer, policy LatePolicy, now func() time.Time, m *telemetry.Metrics, log *slog.Logger) (*Ledger, error) {
	l := NewLedger(sink, namer, policy, now, m)
	if path == "" {
		return l, nil
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("%s ledger: %w", sink, err)
	}
	openLedgers.Lock()
	if openLedgers.paths[abs] {
		openLedgers.Unlock()
		return nil, fmt.Errorf("%s ledger %s: already open in this process (do two sinks share one ledger_path?)", sink, abs)
	}
	openLedgers.paths[abs] = true
	openLedgers.Unlock()
	ok := false
	defer func() {
		if !ok {
			release(abs)
		}
	}()

	if err := os.MkdirAll(filepath.Dir(abs), 0o755); err != nil {
		return nil, fmt.Errorf("%s ledger: %w", sink, err)
	}
	if err := os.Remove(abs + ".tmp"); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s ledger: %w", sink, err)
	}
	ld, err := loadLedger(abs)
	if err != nil {
		return nil, fmt.Errorf("%s ledger: %w", sink, err)
	}
	l.totals = ld.totals
	l.dirty = make(map[totalKey]struct{})
	l.file = &ledgerFile{path: abs}
	if err := l.rewrite(l.now()); err != nil {
		return nil, fmt.Errorf("%s ledger: %w", sink, err)
	}
	ok = true
	if ld.discarded > 0 {
		log.Warn("ledger file ended in a torn or corrupt record; cut it (the totals it held are forgotten, which can only undercount those seconds)",
			"path", abs, "discarded_bytes", ld.discarded, "kept_records", ld.records)
	}
	log.Info("ledger loaded", "path", abs, "totals", len(l.totals), "records_read", ld.records)
	return l, nil
}

func release(abs string) {
	openLedgers.Lock()
	delete(openLedgers.paths, abs)
	openLedgers.Unlock()
}

// Commit makes the totals Delivered recorded since the last Commit durable:
// it appends them to the ledger file and fsyncs it (rewriting the file when
// it has grown well beyond the live totals, or after a failed write). A sink
// calls it after the backend accepted a batch and before reporting success,
// so that the pipeline advances its cursor only past batches whose totals
// the next process will see. For a memory-only Ledger it does nothing.
//
// After an error the totals stay pending, and the next Commit tries again.
func (l *Ledger) Commit() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	lf := l.file
	if lf == nil {
		return nil
	}
	if lf.closed {
		return errors.New("ledger: closed")
	}
	now := l.now()
	if lf.broken || lf.f == nil || lf.records > 2*len(l.totals)+compactSlack {
		return l.rewrite(now)
	}
	if len(l.dirty) == 0 {
		return nil
	}
	keys := make([]totalKey, 0, len(l.dirty))
	for k := range l.dirty {
		if _, ok := l.totals[k]; ok {
			keys = append(keys, k)
		}
	}
	sortKeys(keys)
	var buf, scratch []byte
	n := 0
	for _, k := range keys {
		id, ok := lf.ids[k.series]
		if !ok {
			id = uint64(len(lf.ids)) + 1
			lf.ids[k.series] = id
			scratch = seriesRecord(scratch[:0], id, k.series)
			buf = appendRecord(buf, scratch)
			n++
		}
		scratch = totalRecord(scratch[:0], id, k.ts, l.totals[k])
		buf = appendRecord(buf, scratch)
		n++
	}
	if err := lf.write("append", buf); err != nil {
		lf.broken = true
		return fmt.Errorf("ledger %s: %w", lf.path, err)
	}
	lf.records += n
	clear(l.dirty)
	return nil
}

// write appends buf to the file and fsyncs it.
func (lf *ledgerFile) write(op string, buf []byte) error {
	if err := lf.check(op); err != nil {
		return err
	}
	if _, err := lf.f.Write(buf); err != nil {
		return err
	}
	return lf.f.Sync()
}

// check returns the failure a test injected for op, if any.
func (lf *ledgerFile) check(op string) error {
	if lf.fault == nil {
		return nil
	}
	return lf.fault(op)
}

// rewrite writes every live total to a new file that replaces the old one.
// On success nothing is dirty any more.
func (l *Ledger) rewrite(now time.Time) (err error) {
	lf := l.file
	l.pruneAt(now, true)
	keys := make([]totalKey, 0, len(l.totals))
	for k := range l.totals {
		keys = append(keys, k)
	}
	sortKeys(keys)

	tmp := lf.path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o644)
	if err != nil {
		lf.broken = true
		return fmt.Errorf("ledger %s: %w", lf.path, err)
	}
	renamed := false
	defer func() {
		if err != nil {
			f.Close()
			if !renamed {
				os.Remove(tmp)
			}
			lf.broken = true
			err = fmt.Errorf("ledger %s: %w", lf.path, err)
		}
	}()
	ids := make(map[string]uint64)
	w := bufio.NewWriterSize(f, 64<<10)
	w.WriteString(ledgerMagic)
	var rec, scratch []byte
	n := 0
	for _, k := range keys {
		id, ok := ids[k.series]
		if !ok {
			id = uint64(len(ids)) + 1
			ids[k.series] = id
			scratch = seriesRecord(scratch[:0], id, k.series)
			rec = appendRecord(rec[:0], scratch)
			w.Write(rec)
			n++
		}
		scratch = totalRecord(scratch[:0], id, k.ts, l.totals[k])
		rec = appendRecord(rec[:0], scratch)
		w.Write(rec)
		n++
	}
	if err = w.Flush(); err != nil {
		return err
	}
	if err = lf.check("rewrite"); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = os.Rename(tmp, lf.path); err != nil {
		return err
	}
	renamed = true
	if err = syncDir(filepath.Dir(lf.path)); err != nil {
		return err
	}
	if lf.f != nil {
		lf.f.Close()
	}
	lf.f, lf.ids, lf.records, lf.broken = f, ids, n, false
	clear(l.dirty)
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Close releases the ledger file. It does not Commit: totals delivered by a
// batch whose Send has not succeeded must not become durable, because the
// pipeline will send that batch again (see the package comment). A
// memory-only Ledger has nothing to close. It is safe to call twice.
func (l *Ledger) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	lf := l.file
	if lf == nil || lf.closed {
		return nil
	}
	lf.closed = true
	release(lf.path)
	if lf.f == nil {
		return nil
	}
	if err := lf.f.Close(); err != nil {
		return fmt.Errorf("ledger %s: %w", lf.path, err)
	}
	return nil
}

func sortKeys(keys []totalKey) {
	slices.SortFunc(keys, func(a, b totalKey) int {
		if c := strings.Compare(a.series, b.series); c != 0 {
			return c
		}
		switch {
		case a.ts < b.ts:
			return -1
		case a.ts > b.ts:
			return 1
		}
		return 0
	})
}

func seriesRecord(b []byte, id uint64, key string) []byte {
	b = append(b, recSeries)
	b = binary.AppendUvarint(b, id)
	return append(b, key...)
}

func totalRecord(b []byte, id uint64, ts, total int64) []byte {
	b = append(b, recTotal)
	b = binary.AppendUvarint(b, id)
	b = binary.AppendVarint(b, ts)
	return binary.AppendVarint(b, total)
}

func appendRecord(b, payload []byte) []byte {
	b = binary.LittleEndian.AppendUint32(b, uint32(len(payload)))
	b = binary.LittleEndian.AppendUint32(b, crc32.Checksum(payload, castagnoli))
	return append(b, payload...)
}

type loaded struct {
	totals    map[totalKey]int64
	records   int   // good records read
	discarded int64 // bytes after the last good record
}

// loadLedger reads the ledger file at path; a missing file is an empty
// ledger.
func loadLedger(path string) (loaded, error) {
	ld := loaded{totals: make(map[totalKey]int64)}
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return ld, nil
	}
	if err != nil {
		return ld, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ld, err
	}
	size := st.Size()
	r := bufio.NewReaderSize(f, 64<<10)

	head := make([]byte, len(ledgerMagic))
	n, err := io.ReadFull(r, head)
	switch {
	case err == io.EOF:
		return ld, nil // empty file
	case err == io.ErrUnexpectedEOF && strings.HasPrefix(ledgerMagic, string(head[:n])):
		ld.discarded = size // torn while the file was being created
		return ld, nil
	case err == io.ErrUnexpectedEOF || err == nil && string(head) != ledgerMagic:
		return ld, fmt.Errorf("%s is not a flowmetrics ledger file (it does not start with %q); move it away or fix ledger_path", path, strings.TrimSpace(ledgerMagic))
	case err != nil:
		return ld, err
	}

	good := int64(len(ledgerMagic))
	ids := make(map[uint64]string)
	var hdr [8]byte
	var payload []byte
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				break
			}
			return ld, err
		}
		length := binary.LittleEndian.Uint32(hdr[:4])
		if length == 0 || length > maxLedgerRecord {
			break
		}
		payload = slices.Grow(payload[:0], int(length))[:length]
		if _, err := io.ReadFull(r, payload); err != nil {
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				break
			}
			return ld, err
		}
		if crc32.Checksum(payload, castagnoli) != binary.LittleEndian.Uint32(hdr[4:]) {
			break
		}
		if !applyRecord(payload, ids, ld.totals) {
			break
		}
		good += 8 + int64(length)
		ld.records++
	}
	ld.discarded = size - good
	return ld, nil
}

// applyRecord applies one checked payload; false means it makes no sense
// (corruption that the checksum missed, or a record of a newer format).
func applyRecord(p []byte, ids map[uint64]string, totals map[totalKey]int64) bool {
	kind, p := p[0], p[1:]
	id, k := binary.Uvarint(p)
	if k <= 0 || id == 0 {
		return false
	}
	p = p[k:]
	switch kind {
	case recSeries:
		if _, dup := ids[id]; dup || len(p) == 0 {
			return false
		}
		ids[id] = string(p)
		return true
	case recTotal:
		key, ok := ids[id]
		if !ok {
			return false
		}
		ts, k := binary.Varint(p)
		if k <= 0 {
			return false
		}
		p = p[k:]
		total, k := binary.Varint(p)
		if k <= 0 || k != len(p) {
			return false
		}
		totals[totalKey{key, ts}] = total
		return true
	}
	return false
}
