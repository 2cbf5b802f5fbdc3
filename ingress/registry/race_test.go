//go:build race

package registry_test

// raceDetector is true under -race. bttest's rows share a column-name slice
// between a row and the copy a read works on (inmem.go, row.copy), so a read
// racing a write that adds a column is reported as a data race inside the
// emulator. Tests that need such concurrency skip that part under -race.
const raceDetector = true
