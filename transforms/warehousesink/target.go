package warehousesink

import (
	"fmt"
	"net/url"
	"regexp"
	"strings"

	"github.com/iotpipe/iotpipe/schemas"
)

// target is a parsed Config: which backend, and where in it.
type target struct {
	bigQuery bool
	// path is the DuckDB database file.
	path string
	// project is the BigQuery project.
	project string
	// dataset is the BigQuery dataset or DuckDB schema.
	dataset string
	// emulator is Config.BigQueryEmulator.
	emulator string
}

// projectID is what GCP accepts as a project id. Legacy domain-scoped ids
// (example.com:project) are refused: the colon makes them a port in a URL.
var projectID = regexp.MustCompile(`^[a-z][-a-z0-9]{4,28}[a-z0-9]$`)

const wantURL = "want duckdb:///path/to/file.duckdb or bigquery://project/dataset"

// target parses c, or says why the sink cannot write to it.
func (c Config) target() (target, error) {
	u, err := url.Parse(c.URL)
	if err != nil {
		return target{}, fmt.Errorf("warehouse URL %q: %w", c.URL, err)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return target{}, fmt.Errorf("warehouse URL %q: takes no user, query or fragment; %s", c.URL, wantURL)
	}
	var t target
	switch u.Scheme {
	case "duckdb":
		if u.Host != "" || u.Path == "" || u.Path == "/" {
			return target{}, fmt.Errorf("warehouse URL %q: want duckdb:///path/to/file.duckdb (an absolute path after three slashes)", c.URL)
		}
		t = target{path: u.Path, dataset: c.Dataset}
		if t.dataset == "" {
			t.dataset = "main"
		}
	case "bigquery":
		dataset, extra := strings.CutPrefix(u.Path, "/")
		if !projectID.MatchString(u.Host) || !extra || dataset == "" || strings.Contains(dataset, "/") {
			return target{}, fmt.Errorf("warehouse URL %q: want bigquery://project/dataset, with a project id of 6 to 30 lowercase letters, digits and hyphens", c.URL)
		}
		if c.Dataset != "" && c.Dataset != dataset {
			return target{}, fmt.Errorf("warehouse URL %q names dataset %q but the configured dataset is %q; leave it empty", c.URL, dataset, c.Dataset)
		}
		t = target{bigQuery: true, project: u.Host, dataset: dataset, emulator: c.BigQueryEmulator}
	default:
		return target{}, fmt.Errorf("warehouse URL %q: scheme %q is not supported; %s", c.URL, u.Scheme, wantURL)
	}
	// The view SQL is shared, so the dataset must suit both engines.
	if _, err := schemas.WarehouseViewSQL(t.dataset); err != nil {
		return target{}, fmt.Errorf("warehouse URL %q: %w", c.URL, err)
	}
	return t, nil
}
