// Package registrytest starts a device registry on an in-process Bigtable
// emulator (bttest) for tests, provisioned with the project's devices table.
package registrytest

import (
	"path/filepath"
	"testing"

	"github.com/iotpipe/iotpipe/ingress/registry"
	"github.com/iotpipe/iotpipe/schemas"
	"github.com/iotpipe/iotpipe/testing/emulators"
)

// Bigtable project and instance of the test registry.
const (
	Project  = "registry-test"
	Instance = "registry"
)

// Start starts the emulators, creates schemas.DevicesTable as
// schemas.BigtableLayout declares it, points this process's Google clients
// at the emulators (t.Setenv, so the test cannot be parallel) and opens a
// Store on the table with cfg (Project and Instance are filled in). All of
// it is torn down when the test ends.
func Start(t testing.TB, cfg registry.Config) *registry.Store {
	t.Helper()
	e, err := emulators.Start(emulators.Config{WarehousePath: filepath.Join(t.TempDir(), "w.duckdb")})
	if err != nil {
		t.Fatalf("registrytest: start emulators: %v", err)
	}
	t.Cleanup(func() { e.Close() })
	for k, v := range e.Env() {
		t.Setenv(k, v)
	}
	var families []string
	for _, table := range schemas.BigtableLayout {
		if table.Name == schemas.DevicesTable {
			for _, f := range table.Families {
				families = append(families, f.Name)
			}
		}
	}
	if len(families) == 0 {
		t.Fatalf("registrytest: schemas.BigtableLayout has no %s table", schemas.DevicesTable)
	}
	if err := e.Provision(t.Context(), emulators.Resources{
		Project: Project, Instance: Instance,
		BigtableTables: map[string][]string{schemas.DevicesTable: families},
	}); err != nil {
		t.Fatalf("registrytest: provision: %v", err)
	}
	cfg.Project, cfg.Instance = Project, Instance
	s, err := registry.New(t.Context(), cfg)
	if err != nil {
		t.Fatalf("registrytest: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}
