package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/bigtable"
	"github.com/iotpipe/iotpipe/testing/emulators"
)

func TestRun(t *testing.T) {
	e, err := emulators.Start(emulators.Config{})
	if err != nil {
		t.Fatalf("emulators.Start: %v", err)
	}
	t.Cleanup(func() { e.Close() })
	t.Setenv("BIGTABLE_EMULATOR_HOST", e.Env()["BIGTABLE_EMULATOR_HOST"])
	ctx := t.Context()
	if err := e.Provision(ctx, emulators.Resources{
		Project: "p", Instance: "i",
		BigtableTables: map[string][]string{"telemetry": {"m", "meta"}, "devices": {"d"}},
	}); err != nil {
		t.Fatalf("Provision: %v", err)
	}

	c, err := bigtable.NewClient(ctx, "p", "i")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ts := bigtable.Time(time.Date(2024, 1, 2, 3, 4, 5, 7_000_000, time.UTC))
	cells := []struct{ row, fam, col, val string }{
		{"d1#0001", "m", "temperature", "23.4"},
		{"d1#0001", "meta", "raw", "\x00\xff"},
		{"d1#0002", "m", "temperature", "23.5"},
		{"d2#0001", "m", "temperature", "19"},
	}
	tbl := c.Open("telemetry")
	for _, cell := range cells {
		m := bigtable.NewMutation()
		m.Set(cell.fam, cell.col, ts, []byte(cell.val))
		if err := tbl.Apply(ctx, cell.row, m); err != nil {
			t.Fatalf("Apply %+v: %v", cell, err)
		}
	}

	const at = "@2024-01-02T03:04:05.007000Z"
	tests := []struct {
		name    string
		cfg     config
		want    []string
		wantErr []string
	}{
		{
			name: "all rows",
			cfg:  config{project: "p", instance: "i", table: "telemetry"},
			want: []string{
				"d1#0001  m:temperature  " + at + "  23.4",
				"d1#0001  meta:raw  " + at + "  0x00ff",
				"d1#0002  m:temperature  " + at + "  23.5",
				"d2#0001  m:temperature  " + at + "  19",
			},
		},
		{
			name: "prefix and limit",
			cfg:  config{project: "p", instance: "i", table: "telemetry", prefix: "d1#", limit: 1},
			want: []string{
				"d1#0001  m:temperature  " + at + "  23.4",
				"d1#0001  meta:raw  " + at + "  0x00ff",
			},
		},
		{
			name:    "missing table",
			cfg:     config{project: "p", instance: "i", table: "nope"},
			wantErr: []string{`table "nope" does not exist`, "projects/p/instances/i", "tables there: devices, telemetry"},
		},
		{
			name:    "missing flags",
			cfg:     config{project: "p"},
			wantErr: []string{"-table"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			err := run(ctx, tt.cfg, &out)
			if tt.wantErr != nil {
				if err == nil {
					t.Fatalf("run succeeded, want error mentioning %q", tt.wantErr)
				}
				for _, part := range tt.wantErr {
					if !strings.Contains(err.Error(), part) {
						t.Errorf("error %q does not mention %q", err, part)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("run: %v", err)
			}
			if got, want := out.String(), strings.Join(tt.want, "\n")+"\n"; got != want {
				t.Errorf("output:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}

func TestFormatBytes(t *testing.T) {
	tests := []struct{ in, want string }{
		{"23.4", "23.4"},
		{"température", "température"},
		{"", ""},
		{"a\nb", "0x610a62"},
		{"\xff", "0xff"},
	}
	for _, tt := range tests {
		if got := formatBytes([]byte(tt.in)); got != tt.want {
			t.Errorf("formatBytes(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
