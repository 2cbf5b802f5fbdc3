package schemas

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"
)

// TestEmbeddedSchemasFollowEvolutionRule checks every pair of consecutive
// minor versions of every embedded class, independently of LoadSchemas.
func TestEmbeddedSchemasFollowEvolutionRule(t *testing.T) {
	r, err := LoadSchemas()
	if err != nil {
		t.Fatal(err)
	}
	pairs := 0
	for _, class := range r.Classes() {
		vs := r.versions[class]
		for i := 1; i < len(vs); i++ {
			older, newer := vs[i-1], vs[i]
			if older.major != newer.major {
				continue // a major version may change anything
			}
			pairs++
			t.Run(older.id+"->"+newer.id, func(t *testing.T) {
				if err := CheckMinorEvolution(older.raw, newer.raw); err != nil {
					t.Errorf("%s is not a compatible minor version of %s:\n%v", newer.id, older.id, err)
				}
			})
		}
	}
	if pairs == 0 {
		t.Fatal("no consecutive minor versions embedded: the rule is not exercised")
	}
}

// TestCheckMinorEvolutionRejectsBadPairs runs the checker on hand-made pairs
// in testdata/evolution/{case}/{1.0,1.1}.json; want.txt lists the expected
// problems, one per line, each the start of one reported line.
func TestCheckMinorEvolutionRejectsBadPairs(t *testing.T) {
	dirs, err := filepath.Glob("testdata/evolution/*")
	if err != nil || len(dirs) == 0 {
		t.Fatalf("no bad pairs in testdata/evolution (err %v)", err)
	}
	for _, dir := range dirs {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			older, newer, want := readFile(t, dir, "1.0.json"), readFile(t, dir, "1.1.json"), readFile(t, dir, "want.txt")
			err := CheckMinorEvolution(older, newer)
			if err == nil {
				t.Fatalf("CheckMinorEvolution accepted the bad pair in %s", dir)
			}
			got := strings.Split(err.Error(), "\n")
			wantLines := strings.Split(strings.TrimSpace(string(want)), "\n")
			if len(got) != len(wantLines) {
				t.Errorf("got %d problems, want %d:\n%v", len(got), len(wantLines), err)
			}
			for _, w := range wantLines {
				found := false
				for _, g := range got {
					found = found || strings.HasPrefix(g, w)
				}
				if !found {
					t.Errorf("no problem starting with %q in:\n%v", w, err)
				}
			}
		})
	}
}

// TestBreakingChangeNeedsNewMajor loads the bad pair as a registry: refused
// as minor versions 1.0 and 1.1, accepted as majors 1.0 and 2.0.
func TestBreakingChangeNeedsNewMajor(t *testing.T) {
	older := readFile(t, "testdata/evolution/bad_pair", "1.0.json")
	newer := readFile(t, "testdata/evolution/bad_pair", "1.1.json")
	generic := readEmbedded(t, "generic/1.0.json")

	asMinor := fstest.MapFS{
		"generic/1.0.json":    {Data: generic},
		"thermostat/1.0.json": {Data: older},
		"thermostat/1.1.json": {Data: newer},
	}
	if _, err := loadSchemas(asMinor); err == nil || !strings.Contains(err.Error(), "not a compatible minor version") {
		t.Errorf("loading the bad pair as 1.0 and 1.1: error %v, want one saying it is not a compatible minor version", err)
	}

	asMajor := fstest.MapFS{
		"generic/1.0.json":    {Data: generic},
		"thermostat/1.0.json": {Data: older},
		"thermostat/2.0.json": {Data: []byte(strings.Replace(string(newer), "thermostat/1.1", "thermostat/2.0", 1))},
	}
	r, err := loadSchemas(asMajor)
	if err != nil {
		t.Fatalf("loading the bad pair as 1.0 and 2.0: %v", err)
	}
	if id, _ := r.Latest("thermostat"); id != "iotpipe:telemetry/thermostat/2.0" {
		t.Errorf("Latest(thermostat) = %q, want iotpipe:telemetry/thermostat/2.0", id)
	}
}

func readFile(t *testing.T, dir, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func readEmbedded(t *testing.T, name string) []byte {
	t.Helper()
	b, err := fs.ReadFile(telemetryFiles, "telemetry/"+name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
