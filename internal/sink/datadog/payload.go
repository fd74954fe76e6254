package datadog

import (
	"bytes"
	"compress/gzip"
	"compress/zlib"
	"encoding/json"
	"strconv"
)

// The JSON of POST /api/v2/series. Field order is fixed by the structs, so
// payloads are byte-for-byte reproducible (see testdata/).
type seriesJSON struct {
	Metric   string      `json:"metric"`
	Type     int         `json:"type"`
	Interval int64       `json:"interval"`
	Points   []pointJSON `json:"points"`
	Tags     []string    `json:"tags,omitempty"`
}

type pointJSON struct {
	Timestamp int64 `json:"timestamp"`
	Value     int64 `json:"value"`
}

// typeCount is MetricIntakeType 1: the value is a count over interval.
const typeCount = 1

// chunk is one series object of a payload: samples of one series and
// interval, in time order, and their JSON.
type chunk struct {
	samples []Sample
	json    []byte
}

func newChunk(samples []Sample) chunk {
	if samples[0].dist {
		return newDistChunk(samples)
	}
	s := samples[0]
	sj := seriesJSON{Metric: s.Name, Type: typeCount, Interval: s.Interval, Tags: s.Tags}
	for _, x := range samples {
		sj.Points = append(sj.Points, pointJSON{Timestamp: x.Timestamp, Value: x.Value})
	}
	b, err := json.Marshal(sj)
	if err != nil {
		panic(err) // strings and integers only: cannot fail
	}
	return chunk{samples: samples, json: b}
}

// newDistChunk encodes samples of one series as a series object of POST
// /api/v1/distribution_points:
//
//	{"metric":"…","points":[[<unix seconds>,[1,1,…]],…],"tags":[…],"type":"distribution"}
//
// Each sample of value n is one point of n values of 1, so Datadog's count
// and sum of the series are both the number of occurrences, exactly; a
// sample with Values (durations) is one point of those values.
// Written by hand: encoding/json would build an []any per point.
func newDistChunk(samples []Sample) chunk {
	s := samples[0]
	var b bytes.Buffer
	b.WriteString(`{"metric":`)
	name, _ := json.Marshal(s.Name)
	b.Write(name)
	b.WriteString(`,"points":[`)
	for i, x := range samples {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('[')
		b.WriteString(strconv.FormatInt(x.Timestamp, 10))
		b.WriteString(",[")
		if x.Values != nil {
			for i, v := range x.Values {
				if i > 0 {
					b.WriteByte(',')
				}
				b.WriteString(strconv.FormatFloat(v, 'g', -1, 64))
			}
		} else {
			for v := int64(0); v < x.Value; v++ {
				if v > 0 {
					b.WriteByte(',')
				}
				b.WriteByte('1')
			}
		}
		b.WriteString("]]")
	}
	b.WriteByte(']')
	if len(s.Tags) > 0 {
		tags, _ := json.Marshal(s.Tags)
		b.WriteString(`,"tags":`)
		b.Write(tags)
	}
	b.WriteString(`,"type":"distribution"}`)
	return chunk{samples: samples, json: b.Bytes()}
}

// chunks groups samples (sorted by series, then time) into series objects.
func chunks(samples []Sample) []chunk {
	var out []chunk
	for i := 0; i < len(samples); {
		j := i + 1
		for j < len(samples) && samples[j].key.series == samples[i].key.series && (samples[j].dist || samples[j].Interval == samples[i].Interval) {
			j++
		}
		out = append(out, newChunk(samples[i:j:j]))
		i = j
	}
	return out
}

// payload is one request: some chunks, encoded and compressed.
type payload struct {
	chunks []chunk
	raw    int    // uncompressed size
	body   []byte // gzip
}

func (p payload) samples() []Sample {
	var out []Sample
	for _, c := range p.chunks {
		out = append(out, c.samples...)
	}
	return out
}

// encode writes {"series":[…]} for chunks.
func encode(cs []chunk) []byte {
	var b bytes.Buffer
	b.WriteString(`{"series":[`)
	for i, c := range cs {
		if i > 0 {
			b.WriteByte(',')
		}
		b.Write(c.json)
	}
	b.WriteString(`]}`)
	return b.Bytes()
}

func gz(raw []byte) []byte {
	var b bytes.Buffer
	w := gzip.NewWriter(&b)
	w.Write(raw)
	w.Close()
	return b.Bytes()
}

// deflate compresses with zlib: HTTP's "deflate" content coding (RFC 9110
// 8.4.1.2) and the only Content-Encoding /api/v1/distribution_points
// documents.
func deflate(raw []byte) []byte {
	var b bytes.Buffer
	w := zlib.NewWriter(&b)
	w.Write(raw)
	w.Close()
	return b.Bytes()
}

// packer splits samples into payloads within the size limits.
type packer struct {
	maxCompressed   int // body must be at most this
	maxUncompressed int // JSON must be less than this
	compress        func([]byte) []byte
}

// pack returns payloads within the limits and the chunks that cannot be
// made to fit even alone (a single point too large).
func (pk packer) pack(samples []Sample) ([]payload, []chunk) {
	var out []payload
	var tooBig []chunk
	var cur []chunk
	size := len(`{"series":[]}`)
	flush := func() {
		if len(cur) > 0 {
			ps, tb := pk.fit(cur)
			out = append(out, ps...)
			tooBig = append(tooBig, tb...)
		}
		cur, size = nil, len(`{"series":[]}`)
	}
	for _, c := range chunks(samples) {
		if len(cur) > 0 && size+1+len(c.json) >= pk.maxUncompressed {
			flush()
		}
		cur = append(cur, c)
		size += len(c.json) + 1
	}
	flush()
	return out, tooBig
}

// fit encodes cs as one payload if it is within the limits, and otherwise
// splits it in halves (a lone chunk by its points) until each part is.
func (pk packer) fit(cs []chunk) ([]payload, []chunk) {
	raw := encode(cs)
	if len(raw) < pk.maxUncompressed {
		body := pk.compress(raw)
		if len(body) <= pk.maxCompressed {
			return []payload{{chunks: cs, raw: len(raw), body: body}}, nil
		}
	}
	halves := split(cs)
	if halves == nil {
		return nil, cs
	}
	var out []payload
	var tooBig []chunk
	for _, h := range halves {
		ps, tb := pk.fit(h)
		out = append(out, ps...)
		tooBig = append(tooBig, tb...)
	}
	return out, tooBig
}

// split halves a list of chunks, or a lone chunk by its points; nil when
// there is only one point.
func split(cs []chunk) [][]chunk {
	if len(cs) > 1 {
		m := len(cs) / 2
		return [][]chunk{cs[:m:m], cs[m:]}
	}
	if len(cs) == 1 && len(cs[0].samples) > 1 {
		s := cs[0].samples
		m := len(s) / 2
		return [][]chunk{{newChunk(s[:m:m])}, {newChunk(s[m:])}}
	}
	return nil
}
