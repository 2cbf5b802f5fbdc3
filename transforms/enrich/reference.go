package enrich

import (
	"bufio"
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path"
	"strconv"
	"strings"

	"cloud.google.com/go/storage"

	"github.com/iotpipe/iotpipe/schemas"
)

// CSV columns of a reference file. device_id is required; the others may be
// left out or reordered. An unknown column is an error, so a misspelled
// "thresholds" cannot silently switch alerting off.
const (
	colDeviceID    = "device_id"
	colSite        = "site"
	colLocation    = "location"
	colDeviceClass = "device_class"
	colOwner       = "owner"
	colThresholds  = "thresholds"
)

var knownColumns = []string{colDeviceID, colSite, colLocation, colDeviceClass, colOwner, colThresholds}

// LoadReference reads the reference data (Dataset B) at path, a local file or
// gs://bucket/object. The format follows the extension: .csv, or .ndjson /
// .jsonl (one JSON object per line).
//
// CSV has a header row naming its columns (device_id, site, location,
// device_class, owner, thresholds); thresholds is "metric:min:max;metric2::max",
// an empty bound being unbounded. NDJSON rows are
// {"device_id":..,"site":..,"location":..,"device_class":..,"owner":..,
// "thresholds":{"temperature":{"min":-10,"max":40}}}, a missing or null bound
// being unbounded.
//
// A malformed row, a row without device_id, or a device id given twice is an
// error naming the file and line. GCS is read with the default credentials;
// the client honours STORAGE_EMULATOR_HOST.
func LoadReference(ctx context.Context, path string) ([]schemas.Reference, error) {
	bucket, object, isGCS, err := splitGCS(path)
	if err != nil {
		return nil, err
	}
	decode, err := decoderFor(path)
	if err != nil {
		return nil, err
	}
	r, closeFn, err := open(ctx, path, bucket, object, isGCS)
	if err != nil {
		return nil, err
	}
	refs, err := decode(path, r)
	if cerr := closeFn(); err == nil && cerr != nil {
		return nil, fmt.Errorf("reference data %s: close: %w", path, cerr)
	}
	if err != nil {
		return nil, err
	}
	return refs, nil
}

type decodeFunc func(name string, r io.Reader) ([]schemas.Reference, error)

func decoderFor(name string) (decodeFunc, error) {
	switch ext := strings.ToLower(path.Ext(name)); ext {
	case ".csv":
		return decodeCSV, nil
	case ".ndjson", ".jsonl":
		return decodeNDJSON, nil
	default:
		return nil, fmt.Errorf("reference data %s: unknown format %q; want .csv, .ndjson or .jsonl", name, ext)
	}
}

// splitGCS tells a gs://bucket/object path from a local one.
func splitGCS(name string) (bucket, object string, ok bool, err error) {
	rest, ok := strings.CutPrefix(name, "gs://")
	if !ok {
		return "", "", false, nil
	}
	bucket, object, _ = strings.Cut(rest, "/")
	if bucket == "" || object == "" {
		return "", "", true, fmt.Errorf("reference data %s: want gs://bucket/object", name)
	}
	return bucket, object, true, nil
}

func open(ctx context.Context, name, bucket, object string, isGCS bool) (io.Reader, func() error, error) {
	if !isGCS {
		f, err := os.Open(name)
		if err != nil {
			return nil, nil, fmt.Errorf("reference data: %w", err)
		}
		return f, f.Close, nil
	}
	client, err := storage.NewClient(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("reference data %s: storage client: %w", name, err)
	}
	rd, err := client.Bucket(bucket).Object(object).NewReader(ctx)
	if err != nil {
		client.Close()
		return nil, nil, fmt.Errorf("reference data %s: %w", name, err)
	}
	return rd, func() error { return errors.Join(rd.Close(), client.Close()) }, nil
}

// seen catches a device id given twice and says where it was first.
type seen map[string]int

func (s seen) add(name string, line int, device string) error {
	if first, dup := s[device]; dup {
		return fmt.Errorf("%s:%d: device %q is already defined on line %d", name, line, device, first)
	}
	s[device] = line
	return nil
}

func decodeCSV(name string, r io.Reader) ([]schemas.Reference, error) {
	cr := csv.NewReader(r)
	cr.FieldsPerRecord = 0 // every row as wide as the header
	cr.TrimLeadingSpace = true
	header, err := cr.Read()
	if err == io.EOF {
		return nil, fmt.Errorf("%s: empty file; want a header row", name)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	col := map[string]int{}
	for i, h := range header {
		h = strings.ToLower(strings.TrimSpace(strings.TrimPrefix(h, "\ufeff")))
		if !isKnownColumn(h) {
			return nil, fmt.Errorf("%s:1: unknown column %q; want some of %s", name, h, strings.Join(knownColumns, ","))
		}
		if _, dup := col[h]; dup {
			return nil, fmt.Errorf("%s:1: column %q appears twice", name, h)
		}
		col[h] = i
	}
	if _, ok := col[colDeviceID]; !ok {
		return nil, fmt.Errorf("%s:1: header has no %s column", name, colDeviceID)
	}
	field := func(rec []string, c string) string {
		if i, ok := col[c]; ok {
			return strings.TrimSpace(rec[i])
		}
		return ""
	}
	var refs []schemas.Reference
	ids := seen{}
	for {
		rec, err := cr.Read()
		if err == io.EOF {
			return refs, nil
		}
		if err != nil {
			// csv.ParseError carries the line already.
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		line, _ := cr.FieldPos(0)
		ref := schemas.Reference{
			DeviceID:    field(rec, colDeviceID),
			Site:        field(rec, colSite),
			Location:    field(rec, colLocation),
			DeviceClass: field(rec, colDeviceClass),
			Owner:       field(rec, colOwner),
		}
		if ref.DeviceID == "" {
			return nil, fmt.Errorf("%s:%d: empty %s", name, line, colDeviceID)
		}
		if ref.Thresholds, err = parseThresholds(field(rec, colThresholds)); err != nil {
			return nil, fmt.Errorf("%s:%d: device %q: %w", name, line, ref.DeviceID, err)
		}
		if err := ids.add(name, line, ref.DeviceID); err != nil {
			return nil, err
		}
		refs = append(refs, ref)
	}
}

func isKnownColumn(c string) bool {
	for _, k := range knownColumns {
		if c == k {
			return true
		}
	}
	return false
}

// parseThresholds reads "metric:min:max;metric2::max".
func parseThresholds(s string) (map[string]schemas.Threshold, error) {
	if s == "" {
		return nil, nil
	}
	out := map[string]schemas.Threshold{}
	for _, part := range strings.Split(s, ";") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue // tolerate a trailing ";"
		}
		f := strings.Split(part, ":")
		if len(f) != 3 {
			return nil, fmt.Errorf("threshold %q: want metric:min:max", part)
		}
		metric := strings.TrimSpace(f[0])
		if metric == "" {
			return nil, fmt.Errorf("threshold %q: empty metric name", part)
		}
		var lo, hi *float64
		for i, b := range []**float64{&lo, &hi} {
			text := strings.TrimSpace(f[1+i])
			if text == "" {
				continue
			}
			v, err := strconv.ParseFloat(text, 64)
			if err != nil {
				return nil, fmt.Errorf("threshold %q: bound %q is not a number", part, text)
			}
			*b = &v
		}
		if err := addThreshold(out, metric, lo, hi); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// addThreshold checks one metric's bounds and adds them to m.
func addThreshold(m map[string]schemas.Threshold, metric string, lo, hi *float64) error {
	if _, dup := m[metric]; dup {
		return fmt.Errorf("metric %q has two thresholds", metric)
	}
	if lo == nil && hi == nil {
		return fmt.Errorf("metric %q: threshold has neither min nor max", metric)
	}
	var t schemas.Threshold
	if lo != nil {
		if math.IsNaN(*lo) || math.IsInf(*lo, 0) {
			return fmt.Errorf("metric %q: min %v is not finite", metric, *lo)
		}
		t.HasMin, t.Min = true, *lo
	}
	if hi != nil {
		if math.IsNaN(*hi) || math.IsInf(*hi, 0) {
			return fmt.Errorf("metric %q: max %v is not finite", metric, *hi)
		}
		t.HasMax, t.Max = true, *hi
	}
	if t.HasMin && t.HasMax && t.Min > t.Max {
		return fmt.Errorf("metric %q: min %v is above max %v", metric, t.Min, t.Max)
	}
	m[metric] = t
	return nil
}

type jsonReference struct {
	DeviceID    string `json:"device_id"`
	Site        string `json:"site"`
	Location    string `json:"location"`
	DeviceClass string `json:"device_class"`
	Owner       string `json:"owner"`
	Thresholds  map[string]struct {
		Min *float64 `json:"min"`
		Max *float64 `json:"max"`
	} `json:"thresholds"`
}

func decodeNDJSON(name string, r io.Reader) ([]schemas.Reference, error) {
	br := bufio.NewReader(r) // no line-length limit, unlike bufio.Scanner
	var refs []schemas.Reference
	ids := seen{}
	for line := 1; ; line++ {
		text, err := br.ReadBytes('\n')
		if err != nil && err != io.EOF {
			return nil, fmt.Errorf("%s:%d: %w", name, line, err)
		}
		if t := bytes.TrimSpace(text); len(t) > 0 {
			ref, derr := decodeJSONRow(t)
			if derr != nil {
				return nil, fmt.Errorf("%s:%d: %w", name, line, derr)
			}
			if err := ids.add(name, line, ref.DeviceID); err != nil {
				return nil, err
			}
			refs = append(refs, ref)
		}
		if err == io.EOF {
			return refs, nil
		}
	}
}

func decodeJSONRow(data []byte) (schemas.Reference, error) {
	var j jsonReference
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&j); err != nil {
		return schemas.Reference{}, fmt.Errorf("not a reference JSON object: %w", err)
	}
	if dec.More() {
		return schemas.Reference{}, errors.New("trailing data after the JSON object")
	}
	ref := schemas.Reference{
		DeviceID:    strings.TrimSpace(j.DeviceID),
		Site:        j.Site,
		Location:    j.Location,
		DeviceClass: j.DeviceClass,
		Owner:       j.Owner,
	}
	if ref.DeviceID == "" {
		return schemas.Reference{}, fmt.Errorf("empty %s", colDeviceID)
	}
	if len(j.Thresholds) > 0 {
		ref.Thresholds = make(map[string]schemas.Threshold, len(j.Thresholds))
		for metric, b := range j.Thresholds {
			if metric == "" {
				return schemas.Reference{}, fmt.Errorf("device %q: threshold with an empty metric name", ref.DeviceID)
			}
			if err := addThreshold(ref.Thresholds, metric, b.Min, b.Max); err != nil {
				return schemas.Reference{}, fmt.Errorf("device %q: %w", ref.DeviceID, err)
			}
		}
	}
	return ref, nil
}

// WriteNDJSON writes refs in the NDJSON form LoadReference reads.
func WriteNDJSON(w io.Writer, refs []schemas.Reference) error {
	enc := json.NewEncoder(w)
	for _, r := range refs {
		row := jsonReference{DeviceID: r.DeviceID, Site: r.Site, Location: r.Location, DeviceClass: r.DeviceClass, Owner: r.Owner}
		if len(r.Thresholds) > 0 {
			row.Thresholds = map[string]struct {
				Min *float64 `json:"min"`
				Max *float64 `json:"max"`
			}{}
			for metric, t := range r.Thresholds {
				var b struct {
					Min *float64 `json:"min"`
					Max *float64 `json:"max"`
				}
				if t.HasMin {
					b.Min = &t.Min
				}
				if t.HasMax {
					b.Max = &t.Max
				}
				row.Thresholds[metric] = b
			}
		}
		if err := enc.Encode(row); err != nil {
			return fmt.Errorf("writing reference row of %s: %w", r.DeviceID, err)
		}
	}
	return nil
}
